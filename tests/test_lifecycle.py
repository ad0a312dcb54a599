"""The experiment lifecycle end to end in fresh labs: new → running → finished → evaluated →
analysed → review --approve → commit, plus the bad-input and process-control cases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab_helpers import invoke, make_lab, metrics_steps, tree, wait_state

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def lab(tmp_path, bundled_data):
    return make_lab(tmp_path / "lab", bundled_data)


GOAL = "Baseline on the bundled facts"
HYP = "A dense model lowers inference loss below uniform"


def _git_status(lab) -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=lab.root, capture_output=True, text=True).stdout


@pytest.mark.parametrize("args, code, message", [
    (["new", "1.4", "--goal", GOAL, "--hypothesis", HYP], 2, "invalid version"),
    (["new", "1.4.8.1", "--goal", GOAL, "--hypothesis", HYP], 2, "invalid version"),
    (["new", "../1.4.8", "--goal", GOAL, "--hypothesis", HYP], 2, "invalid version"),
    (["new", "1.4.8; rm -rf x", "--goal", GOAL, "--hypothesis", HYP], 2, "invalid version"),
    (["new", "1.4.8", "--goal", GOAL, "--hypothesis", HYP, "--base", "1.4.7"], 2, "base experiment 1.4.7 does not exist"),
    (["new", "1.4.8", "--goal", GOAL, "--hypothesis", HYP, "--set", "dimm=3"], 2, "unknown setting 'dimm'"),
    (["new", "1.4.8", "--goal", GOAL, "--hypothesis", HYP, "--set", "dim=100000"], 2, "model.dim: must be <="),
    (["new", "1.4.8", "--goal", GOAL, "--hypothesis", HYP, "--set", "knowledge_num=1000"], 2, "perfect square"),
    (["new", "1.4.8", "--goal", GOAL, "--hypothesis", HYP, "--set", "batch_size=$(touch pwned)"], 2, "train.batch_size"),
    (["new", "1.4.8", "--goal", GOAL, "--hypothesis", HYP, "--agent", "claude"], 1, "ANTHROPIC_API_KEY"),
    (["new", "1.4.8", "--goal", "", "--hypothesis", HYP], 2, "must not be empty"),
])
def test_new_bad_input_changes_nothing(lab, args, code, message):
    before, status_before = tree(lab.root), _git_status(lab)
    result = invoke(lab, *args)
    assert result.exit_code == code, result.output
    lines = [l for l in result.output.strip().splitlines() if l]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert tree(lab.root) == before and _git_status(lab) == status_before
    assert not (lab.root / "pwned").exists()


def test_unknown_key_in_lab_settings(lab):
    settings = lab.settings_path.read_text()
    lab.settings_path.write_text(settings + "surprise: 1\n")
    result = invoke(lab, "status")
    assert result.exit_code == 1 and "unknown key surprise" in result.output
    result = invoke(lab, "new", "0.1.0", "--goal", GOAL, "--hypothesis", HYP)
    assert result.exit_code == 1 and not (lab.runs_dir / "0.1.0").exists()


def test_existing_version_refused_and_drafted_record(lab):
    result = invoke(lab, "new", "0.1.0", "--goal", GOAL, "--hypothesis", HYP, "--no-launch", "--set", "max_steps=7")
    assert result.exit_code == 0, result.output
    record = lab.record_path("0.1.0").read_text()
    assert GOAL in record and HYP in record and "state: drafted" in record
    assert (lab.models_dir / "model_0_1_0.py").read_bytes() == (lab.models_dir / "model.py").read_bytes()
    before = tree(lab.root)
    result = invoke(lab, "new", "0.1.0", "--goal", GOAL, "--hypothesis", HYP)
    assert result.exit_code == 2 and "already exists" in result.output
    assert tree(lab.root) == before
    # Drafted records cannot be approved, and unreviewed experiments cannot be committed.
    assert invoke(lab, "review", "0.1.0", "--approve").exit_code == 3
    result = invoke(lab, "commit", "0.1.0")
    assert result.exit_code == 3 and "not reviewed" in result.output


def test_dirty_snapshot_gate(lab):
    (lab.models_dir / "model_0_2_0.py").write_text("# edited snapshot\n")
    before = tree(lab.root)
    result = invoke(lab, "new", "0.2.0", "--goal", GOAL, "--hypothesis", HYP, "--no-launch")
    assert result.exit_code == 3 and "never edited" in result.output
    assert tree(lab.root) == before


def test_hostile_text_never_reaches_the_shell(lab, tmp_path):
    marker = tmp_path / "pwned"
    goal = f"Test $(touch {marker}) and `touch {marker}`; rm -rf / \n echo hi > {marker}"
    result = invoke(lab, "new", "0.3.0", "--goal", goal, "--hypothesis", HYP, "--no-launch",
                    "--set", f"swanlab.project=$(touch {marker})")
    assert result.exit_code == 0, result.output
    script = (lab.run_dir("0.3.0") / "run.sh").read_text()
    assert "touch" not in script and "rm -rf" not in script
    assert subprocess.run(["bash", "-n", str(lab.run_dir("0.3.0") / "run.sh")]).returncode == 0
    config = (lab.run_dir("0.3.0") / "config.yaml").read_text()
    assert f"$(touch {marker})" in config  # stored as data, verbatim
    assert goal in json.loads((lab.run_dir("0.3.0") / "plan.json").read_text())["goal"]
    assert not marker.exists()


def test_concurrent_new_exactly_one_succeeds(lab):
    env = dict(os.environ, MINIMIND_LAB=str(lab.root))
    cmd = [sys.executable, "-c", "import cli, sys; sys.exit(cli.main())", "new", "0.4.0", "--goal", GOAL,
           "--hypothesis", HYP, "--no-launch"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=120), p.stdout.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    loser = next(out for code, out in results if code != 0)
    assert "already exists" in loser or "in progress" in loser
    assert sorted(p.name for p in lab.runs_dir.iterdir() if not p.name.startswith(".git")) == ["0.4.0"]
    assert len(list(lab.experiment_dir.glob("experiment_0.4.0.md"))) == 1


@pytest.fixture(scope="module")
def looped(tmp_path_factory, bundled):
    """One lab through the whole loop, trained once for the tests below: 0.1.0 dense (reviewed
    and committed), then 0.1.1 memory with a Chinese record. Each test checks one feature, so
    the first failure does not hide the rest."""
    lab = make_lab(tmp_path_factory.mktemp("loop") / "lab", bundled)
    result = invoke(lab, "new", "0.1.0", "--goal", GOAL, "--hypothesis", HYP)
    assert result.exit_code == 0, result.output
    assert wait_state(lab, "0.1.0") == "finished"
    result = invoke(lab, "review", "0.1.0", "--approve")
    assert result.exit_code == 0, result.output
    result = invoke(lab, "commit", "0.1.0")  # as the session's researcher (conftest)
    assert result.exit_code == 0, result.output
    result = invoke(lab, "new", "0.1.1", "--goal", "Memory layer instead of FFN", "--hypothesis",
                    "The memory bank lowers inference loss", "--set", "preset=memory", "--lang", "zh")
    assert result.exit_code == 0, result.output
    assert wait_state(lab, "0.1.1") in ("finished", "guardrail_stopped")
    return lab


def test_a_run_is_evaluated_analysed_and_recorded(looped):
    lab = looped
    status = json.loads(invoke(lab, "status", "--json").output)
    assert status[0]["version"] == "0.1.0" and status[0]["state"] == "finished"
    assert status[0]["evaluated"] and status[0]["analysed"]
    record = lab.record_path("0.1.0").read_text()
    for heading in ("🧠 AI Thinking Process", "📊 Training Results", "🎯 Conclusion", "Hypothesis verdict"):
        assert heading in record
    assert "Pending" not in record
    assert (lab.run_dir("0.1.0") / "plots" / "loss.png").exists()
    log = (lab.run_dir("0.1.0") / "train.log").read_text()  # what `log -f` showed while it evaluated
    assert all(f"] {part} ..." in log for part in ("validation loss", "inference decoding", "samples", "recall")), log
    message = (lab.run_dir("0.1.0") / "commit_message.md").read_text()
    assert "## Main improvements" in message and "## Results" in message and "## Next steps" in message


def test_commit_holds_exactly_the_experiments_files(looped):
    lab = looped
    shown = subprocess.run(["git", "show", "--stat", "--format=%an <%ae>|%cn|%s",
                            _commit_of(lab, "0.1.0")], cwd=lab.root,
                           capture_output=True, text=True).stdout
    files = [l.split("|")[0].strip() for l in shown.splitlines()[1:] if "|" in l and "changed" not in l]
    assert files and all(f.startswith(("experiment/experiment_0.1.0.md", "runs/0.1.0/", "models/model", "experiment/INDEX.md",
                                          "experiment/LESSONS.md")) for f in files), shown
    assert "runs/0.1.0/checkpoints" not in shown and "train.log" not in shown
    assert shown.startswith("Test Researcher <researcher@example.org>|Test Researcher|Experiment 0.1.0")


def _commit_of(lab, version: str) -> str:
    return subprocess.run(["git", "log", "--format=%H", "--grep", f"^Experiment {version}"], cwd=lab.root,
                          capture_output=True, text=True, check=True).stdout.split()[0]


def test_any_checkpoint_evaluates_through_its_snapshot(looped):
    """Like the lab's eval_model.py; a damaged checkpoint is a clear one-line error."""
    lab = looped
    ckpt = lab.run_dir("0.1.0") / "checkpoints" / "last.pth"
    result = invoke(lab, "eval", "--model-path", str(ckpt), "--model-type", "model_0_1_0", "--num-samples", "2")
    assert result.exit_code == 0, result.output
    broken = lab.root / "broken.pth"
    broken.write_bytes(ckpt.read_bytes()[:5000])
    try:
        result = invoke(lab, "eval", "--model-path", str(broken), "--model-type", "model_0_1_0")
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    finally:
        broken.unlink()


def test_a_zh_experiment_has_no_english_sentences(looped):
    """Every sentence the offline agent and the verdict code write is Chinese in a zh experiment:
    no static fragment (3+ words) of their English templates appears in the record or the commit."""
    import re

    from minimind import phrases

    from lifecycle.knowledge.checks import CHECKS

    lab = looped
    record = lab.record_path("0.1.1").read_text()
    assert "🧠 AI思考过程" in record and "🎯 实验结论" in record and "假设判定" in record
    message = (lab.run_dir("0.1.1") / "commit_message.md").read_text()
    assert "## 主要改进" in message
    # Every English phrase of the book that has a Chinese counterpart of its own.
    english = {frag.strip(" .,:;()") for key in phrases.keys() if phrases.text(key, "en") != phrases.text(key, "zh")
               for frag in re.split(r"\{[^}]*\}", phrases.text(key, "en"))}
    english |= {c.lesson for c in CHECKS} | {c.source for c in CHECKS}
    english = {f for f in english if len(f.split()) >= 3}
    assert len(english) > 80
    leaked = sorted(f for f in english if f in record or f in message)
    assert leaked == [], leaked
    # The preflight table, the compute estimate and the next-experiment proposal (lifecycle/knowledge/checks.py,
    # estimate.py, proposal.py) are Chinese too: no run of four English words outside code spans.
    preflight = record.split("**启动前检查**", 1)[1].split("## ", 1)[0]
    nxt = record.split("**建议的下一个实验**", 1)[1]
    plan = json.loads((lab.run_dir("0.1.1") / "plan.json").read_text())
    assert all(c["zh"]["detail"] in preflight and c["detail"] not in preflight for c in plan["preflight"]["checks"])
    for section in (preflight, nxt):
        words = re.findall(r"[A-Za-z]+(?:[ ,;]+[A-Za-z]+){3,}", re.sub(r"`[^`]*`", "", section))
        assert words == [], words
    assert "参数:" in preflight and "每 token FLOPs" in preflight
    assert "实验 0.1.1" in message and "Experiment 0.1.1" not in message
    assert "## 核心变更\n### " in message and "`model.preset` original → memory" in message
    analysis = json.loads((lab.run_dir("0.1.1") / "analysis.json").read_text())
    assert analysis["notes"] == [] and analysis["commit_notes"] == []  # its own zh text passes the prose checks


def test_compare_shows_config_metrics_bank_reads_and_a_plot(looped):
    lab = looped
    plot = lab.root / "cmp.png"
    result = invoke(lab, "compare", "0.1.0", "0.1.1", "--plot", str(plot))
    assert result.exit_code == 0, result.output
    assert "model.preset" in result.output and "inference_loss" in result.output and plot.stat().st_size > 1000
    assert "train.batch_size" not in result.output  # equal keys are not shown
    assert "Bank reads of 0.1.1" in result.output and "hit@C" in result.output
    record = lab.record_path("0.1.1").read_text()
    assert "记忆库检索" in record and "hit@C" in record


def test_memory_show_reads_the_bank_and_names_a_probes_entry(looped):
    lab = looped
    result = invoke(lab, "memory", "show", "0.1.1", "--text", "The capital of France is")
    assert result.exit_code == 0, result.output
    assert "entry text" in result.output
    # A probe prompt whose fact sits in the bank: memory show says whether that entry was read.
    from corpus.knowledge import bank_rows, probe_key

    rows = bank_rows(lab.data_dir / "knowledge.json", 256)
    probe = next(p for p in json.loads((lab.data_dir / "probes.json").read_text())["splits"]["mem_only"]
                 if probe_key(p) in rows)
    result = invoke(lab, "memory", "show", "0.1.1", "--text", probe["prompt"])
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())
    assert f"Probe {probe['id']} (mem_only)" in shown and " read at the last token" in shown
    result = invoke(lab, "memory", "show", "0.1.0", "--text", "Paris")
    assert result.exit_code == 1 and "no memory layer" in result.output


def test_kill9_is_lost_then_resume_finishes(lab):
    result = invoke(lab, "new", "0.5.0", "--goal", GOAL, "--hypothesis", HYP, "--set", "max_steps=400",
                    "--set", "save_interval=5")
    assert result.exit_code == 0, result.output
    wait_state(lab, "0.5.0", predicate=lambda d, s: (lab.run_dir("0.5.0") / "checkpoints" / "last.pth").exists()
               and (s.step or 0) >= 12)
    state = json.loads((lab.run_dir("0.5.0") / "state.json").read_text())
    os.killpg(state["pgid"], signal.SIGKILL)
    t0 = time.time()
    assert wait_state(lab, "0.5.0", until=("lost",), timeout=60) == "lost"
    assert time.time() - t0 < 60
    assert invoke(lab, "review", "0.5.0", "--approve").exit_code == 3
    result = invoke(lab, "resume", "0.5.0")
    assert result.exit_code == 0 and "last checkpoint" in result.output, result.output
    assert wait_state(lab, "0.5.0", timeout=400) == "finished"
    steps = metrics_steps(lab, "0.5.0")
    total = json.loads((lab.run_dir("0.5.0") / "state.json").read_text())["total_steps"]
    expected = list(range(2, total + 1, 2)) + ([total] if total % 2 else [])  # log_interval 2, plus the last step
    assert steps == expected  # every logged step exactly once: none duplicated, none missing


def test_stop_signals_only_its_group(lab):
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        result = invoke(lab, "new", "0.6.0", "--goal", GOAL, "--hypothesis", HYP, "--set", "max_steps=5000")
        assert result.exit_code == 0, result.output
        wait_state(lab, "0.6.0", predicate=lambda d, s: (s.step or 0) >= 4)
        t0 = time.time()
        result = invoke(lab, "stop", "0.6.0")
        assert result.exit_code == 0, result.output
        assert time.time() - t0 < 30
        assert wait_state(lab, "0.6.0") == "stopped"
        assert (lab.run_dir("0.6.0") / "checkpoints" / "last.pth").exists()
        assert decoy.poll() is None  # a process outside the run's group is untouched
        assert invoke(lab, "stop", "0.6.0").exit_code == 1
    finally:
        decoy.kill()
        decoy.wait()


def test_commit_refuses_secrets_and_stages_only_the_experiment(lab):
    assert invoke(lab, "new", "0.7.0", "--goal", GOAL, "--hypothesis", HYP, "--no-launch").exit_code == 0
    (lab.root / "notes.txt").write_text("unrelated work in progress\n")
    record = lab.record_path("0.7.0")
    clean = record.read_text()
    record.write_text(clean + "\nANTHROPIC key: sk-ant-api03-abcdefghijklmnopqrstuvwxyz\n")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=lab.root, capture_output=True, text=True).stdout
    result = invoke(lab, "commit", "0.7.0", "--yes")
    assert result.exit_code == 3 and "looks like a secret" in result.output, result.output
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=lab.root, capture_output=True, text=True).stdout == head
    record.write_text(clean)
    result = invoke(lab, "commit", "0.7.0", "--yes")
    assert result.exit_code == 0, result.output
    files = subprocess.run(["git", "show", "--name-only", "--format=", "HEAD"], cwd=lab.root, capture_output=True,
                           text=True).stdout.split()
    assert "notes.txt" not in files and "experiment/experiment_0.7.0.md" in files
    assert all(f.startswith(("experiment/experiment_0.7.0.md", "runs/0.7.0/", "models/model", "experiment/INDEX.md",
                                  "experiment/LESSONS.md")) for f in files), files
    assert "?? notes.txt" in _git_status(lab)


def test_review_edit_opens_the_editor(lab, tmp_path):
    assert invoke(lab, "new", "0.8.0", "--goal", GOAL, "--hypothesis", HYP, "--no-launch").exit_code == 0
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\necho 'Reviewer note: checked.' >> \"$1\"\n")
    editor.chmod(0o755)
    result = invoke(lab, "review", "0.8.0", "--edit", env={"EDITOR": str(editor), "VISUAL": ""})
    assert result.exit_code == 0, result.output
    assert "Reviewer note: checked." in lab.record_path("0.8.0").read_text()
    assert "training has not completed" in result.output


def test_status_never_calls_a_reused_pid_running(lab):
    assert invoke(lab, "new", "0.9.0", "--goal", GOAL, "--hypothesis", HYP, "--no-launch").exit_code == 0
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from minimind.rundir import process_start_time, update_state

        # The recorded pid is alive but belongs to another process (its start time differs).
        update_state(lab.run_dir("0.9.0"), state="running", pid=stranger.pid, pgid=stranger.pid,
                     proc_start=process_start_time(stranger.pid) - 100)
        status = json.loads(invoke(lab, "status", "--json").output)
        assert status[0]["state"] == "lost"
        assert invoke(lab, "stop", "0.9.0").exit_code == 1
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_record_execution_section_follows_training(lab, monkeypatch):
    """The pipeline (never the trainer) re-renders the record while training runs."""
    from lifecycle.running import launch, pipeline
    from minimind.rundir import process_start_time, update_state

    assert invoke(lab, "new", "0.10.0", "--goal", GOAL, "--hypothesis", HYP, "--no-launch").exit_code == 0
    run_dir = lab.run_dir("0.10.0")
    update_state(run_dir, state="running", pid=os.getpid(), pgid=os.getpgid(0), proc_start=process_start_time(os.getpid()),
                 started_at=time.time())
    trainer = ("import sys, time; from minimind.rundir import update_state; "
               "update_state(sys.argv[1], step=7, total_steps=10, eta_s=30.0); time.sleep(4)")
    monkeypatch.setattr(launch, "train_command", lambda lab_, cfg, rd: [sys.executable, "-c", trainer, str(rd)])
    monkeypatch.setattr(pipeline, "RECORD_REFRESH_S", 0.5)
    monkeypatch.setattr(pipeline, "POLL_S", 0.1)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    assert pipeline._train(run_dir, resume=False) == 0
    record = lab.record_path("0.10.0").read_text()
    assert "step 7 / 10, ETA 30s" in record and f"pid {os.getpid()}" in record


def test_new_without_data_refuses_before_writing(tmp_path):
    from lifecycle.init import init_lab

    bare = init_lab(tmp_path / "bare")
    before = tree(bare.root)
    result = invoke(bare, "new", "0.1.0", "--goal", GOAL, "--hypothesis", HYP)
    assert result.exit_code == 1 and "minimind data build" in result.output, result.output
    assert tree(bare.root) == before
    assert invoke(bare, "new", "0.1.0", "--goal", GOAL, "--hypothesis", HYP, "--no-launch").exit_code == 0


def test_stop_during_evaluation_is_stopped_and_resumes(lab):
    result = invoke(lab, "new", "0.11.0", "--goal", GOAL, "--hypothesis", HYP, "--set", "eval.num_samples=40",
                    "--set", "eval.max_new_tokens=48")
    assert result.exit_code == 0, result.output
    wait_state(lab, "0.11.0", predicate=lambda d, s: s.train_outcome == "finished" or d != "running")
    result = invoke(lab, "stop", "0.11.0")
    assert result.exit_code == 0, result.output
    derived = wait_state(lab, "0.11.0")
    state = json.loads((lab.run_dir("0.11.0") / "state.json").read_text())
    assert derived == "stopped" and state["stop_reason"].startswith("stopped "), state  # during eval or as training ended
    result = invoke(lab, "resume", "0.11.0")
    assert result.exit_code == 0, result.output
    assert wait_state(lab, "0.11.0") == "finished"
    assert (lab.run_dir("0.11.0") / "eval.json").exists()
