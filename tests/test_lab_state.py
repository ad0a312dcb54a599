"""A lab's state survives a clone and never lies; a verb that fails writes nothing.

The module's trained lab (two finished experiments) is built once; the tests run in order
on it: a review that fails, commits, then a real `git clone` of the lab.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab_helpers import invoke, make_lab, tree, wait_state

ROOT = Path(__file__).resolve().parent.parent
GOAL = "Baseline on the bundled facts"
HYP = "A dense model lowers inference loss below uniform"


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def _status(lab) -> dict:
    result = invoke(lab, "status", "--json")
    assert result.exit_code == 0, result.output
    return {row["version"]: row for row in json.loads(result.output)}


@pytest.fixture
def lab(tmp_path, bundled_data):
    return make_lab(tmp_path / "lab", bundled_data)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, bundled_data):
    """A lab with two finished experiments: 0.1.0 (dense) and 0.1.1 on it."""
    lab = make_lab(tmp_path_factory.mktemp("trained") / "lab", bundled_data, steps=6)
    for version, extra in (("0.1.0", ()), ("0.1.1", ("--set", "learning_rate=0.002"))):
        result = invoke(lab, "new", version, "--goal", GOAL, "--hypothesis", HYP, *extra)
        assert result.exit_code == 0, result.output
        assert wait_state(lab, version) == "finished"
    return lab


# --- the pure rules ---------------------------------------------------------------------

def test_corrupt_or_missing_state_is_never_finished_or_drafted(lab):
    from minimind.rundir import MISSING, UNREADABLE, current, write_exit_code

    assert invoke(lab, "new", "0.1.0", "--goal", GOAL, "--hypothesis", HYP, "--no-launch").exit_code == 0
    assert invoke(lab, "new", "0.1.1", "--goal", GOAL, "--hypothesis", HYP, "--no-launch", "--base", "0.1.0").exit_code == 0
    run0, run1 = lab.run_dir("0.1.0"), lab.run_dir("0.1.1")
    (run0 / "state.json").unlink()
    write_exit_code(run1, 0)  # an exit code of 0 once read a corrupt state as finished
    (run1 / "state.json").write_text('{"state": "drafted", "ba')
    assert current(run0)[0] == MISSING and current(run1)[0] == UNREADABLE
    rows = _status(lab)
    assert list(rows) == ["0.1.0", "0.1.1"]  # neither is hidden
    assert rows["0.1.0"]["state"] == "missing" and "state.json is missing" in rows["0.1.0"]["state_note"]
    assert rows["0.1.1"]["state"] == "unreadable" and "not valid JSON" in rows["0.1.1"]["state_note"]
    assert rows["0.1.1"]["base"] == "0.1.0"  # what the config says is still shown
    table = invoke(lab, "status").output
    assert "0.1.0: state.json is missing" in table and "0.1.1: state.json is not valid JSON" in table
    detail = invoke(lab, "status", "0.1.1").output
    assert "unreadable" in detail and "not valid JSON" in detail
    history = json.loads(invoke(lab, "history", "--json").output)
    assert [r["state"] for r in history] == ["missing", "unreadable"]
    # Nothing acts on a state it cannot read.
    for verb in (("resume", "0.1.0"), ("commit", "0.1.1", "--yes"), ("discard", "0.1.0")):
        before = tree(lab.root)
        result = invoke(lab, *verb)
        assert result.exit_code != 0 and "Traceback" not in result.output, result.output
        assert tree(lab.root) == before


def test_default_base_is_the_highest_finished(lab, monkeypatch):
    from lifecycle.knowledge.bases import finished_base
    from minimind.rundir import update_state, write_exit_code

    for version in ("0.1.0", "0.1.1", "0.1.2"):
        assert invoke(lab, "new", version, "--goal", GOAL, "--hypothesis", HYP, "--no-launch").exit_code == 0
    assert finished_base(lab, "0.2.0") is None  # drafts never ran: nothing to build on
    for version, code in (("0.1.0", 0), ("0.1.1", 1)):  # 0.1.0 finished, 0.1.1 failed, 0.1.2 a draft
        update_state(lab.run_dir(version), state="running", pid=1, proc_start=0)
        write_exit_code(lab.run_dir(version), code)
    assert finished_base(lab, "0.2.0") == "0.1.0"
    result = invoke(lab, "new", "0.2.0", "--goal", GOAL, "--hypothesis", HYP, "--no-launch")
    assert result.exit_code == 0, result.output
    assert "base 0.1.0" in result.output
    assert json.loads((lab.run_dir("0.2.0") / "plan.json").read_text())["base"] == "0.1.0"


def test_the_default_base_of_a_pretraining_run_is_a_pretraining_run(lab):
    """A walk through the README: after the SFT 1.5.0 of 1.4.8, `new 1.5.1` (pretraining) took
    the SFT run as its base, and would have compared its inference loss with one SFT had raised."""
    from lifecycle.knowledge.bases import finished_base
    from minimind.rundir import update_state, write_exit_code

    for version in ("0.1.0", "0.1.1"):
        assert invoke(lab, "new", version, "--goal", GOAL, "--hypothesis", HYP, "--no-launch").exit_code == 0
        update_state(lab.run_dir(version), state="running", pid=1, proc_start=0)
        write_exit_code(lab.run_dir(version), 0)
    update_state(lab.run_dir("0.1.1"), stage="sft")  # 0.1.1 stands for an SFT of 0.1.0
    assert finished_base(lab, "0.2.0") == "0.1.0"
    result = invoke(lab, "new", "0.2.0", "--goal", GOAL, "--hypothesis", HYP, "--no-launch")
    assert result.exit_code == 0 and "base 0.1.0" in result.output, result.output


@pytest.mark.parametrize("derived, code", [("finished", 0), ("stopped", 10), ("failed", 1), ("drafted", None)])
def test_the_committed_state_has_no_processes_and_a_clone_carries_it_on(tmp_path, derived, code):
    from minimind.atomic import write_json
    from minimind.rundir import (COMMITTED_STATE_FILE, RunState, committed_state, current, has_state, read_exit_code,
                                 update_state)

    run = tmp_path / "0.1.0"
    run.mkdir()
    recorded = "running" if derived in ("finished", "failed") else derived
    state = RunState(version="0.1.0", base="0.0.9", state=recorded, pid=os.getpid(), pgid=os.getpid(), proc_start=5,
                     heartbeat=1.0, eta_s=3.0, gpus=[0], step=6, total_steps=6, evaluated=True, train_outcome=derived)
    data = committed_state(derived, state, code)
    assert all(data[k] is None for k in ("pid", "pgid", "proc_start", "heartbeat", "eta_s", "gpus", "commit"))
    assert (data["state"], data["exit_code"], data["committed"], data["base"], data["step"]) == (derived, code, True,
                                                                                                  "0.0.9", 6)
    write_json(run / COMMITTED_STATE_FILE, data)
    assert current(run)[0] == derived and not has_state(run)
    update_state(run, reviewed=True)  # the first local write in a clone starts from the committed state
    assert has_state(run) and read_exit_code(run) == code
    derived_now, now = current(run)
    assert derived_now == derived and now.reviewed and now.base == "0.0.9" and now.committed


# --- SIGTERM during new ------------------------------------------------------------------

def _new_process(lab, version: str) -> subprocess.Popen:
    env = dict(os.environ, MINIMIND_LAB=str(lab.root), PYTHONPATH=str(ROOT))
    # SIGINT as from a terminal (a background test runner may have it ignored).
    code = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); import cli, sys; sys.exit(cli.main())"
    return subprocess.Popen([sys.executable, "-c", code, "new", version, "--goal",
                             GOAL, "--hypothesis", HYP, "--no-launch"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_when(proc: subprocess.Popen, appeared: Path, sig: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not appeared.exists():
        assert proc.poll() is None, f"new ended before {appeared} appeared:\n{proc.stdout.read()}"
        assert time.time() < deadline, f"{appeared} never appeared"
        time.sleep(0.001)
    proc.send_signal(sig)


@pytest.mark.parametrize("marker, sig", [
    ("runs/.{version}.lock", signal.SIGTERM),        # while it plans
    ("models/model_{module}.py", signal.SIGTERM),    # snapshot taken, run folder and record next
    ("runs/.{version}.lock", signal.SIGINT),
])
def test_signal_during_new_leaves_nothing(lab, marker, sig):
    assert invoke(lab, "new", "0.1.0", "--goal", GOAL, "--hypothesis", HYP, "--no-launch").exit_code == 0
    before, status_before = tree(lab.root), _git(lab.root, "status", "--porcelain")
    proc = _new_process(lab, "0.1.1")
    _kill_when(proc, lab.root / marker.format(version="0.1.1", module="0_1_1"), sig)
    code = proc.wait(timeout=120)
    output = proc.stdout.read()
    assert code == (143 if sig == signal.SIGTERM else 130), output
    assert "Traceback" not in output
    assert tree(lab.root) == before, sorted(set(tree(lab.root)) ^ set(before))
    assert _git(lab.root, "status", "--porcelain") == status_before
    assert sorted(p.name for p in lab.runs_dir.iterdir()) == [".gitkeep", "0.1.0"]
    # The version is free again: new succeeds, and nothing is left for discard to clean.
    result = invoke(lab, "new", "0.1.1", "--goal", GOAL, "--hypothesis", HYP, "--no-launch")
    assert result.exit_code == 0, result.output


# --- discard -------------------------------------------------------------------------------

def test_discard_removes_a_draft_and_its_snapshot(lab):
    assert invoke(lab, "new", "0.1.0", "--goal", GOAL, "--hypothesis", HYP, "--no-launch").exit_code == 0
    before = tree(lab.root)
    assert invoke(lab, "new", "0.1.1", "--goal", GOAL, "--hypothesis", HYP, "--no-launch").exit_code == 0
    assert (lab.models_dir / "model_0_1_1.py").exists()
    result = invoke(lab, "discard", "0.1.1")
    assert result.exit_code == 0, result.output
    assert not lab.run_dir("0.1.1").exists() and not lab.record_path("0.1.1").exists()
    assert not (lab.models_dir / "model_0_1_1.py").exists()
    assert "0.1.1" not in (lab.experiment_dir / "INDEX.md").read_text()
    after = tree(lab.root)
    assert set(after) == set(before) and all(after[p] == before[p] for p in after if "INDEX" not in p)
    assert not [p for p in lab.runs_dir.iterdir() if p.name.startswith(".discard")]
    result = invoke(lab, "discard", "0.1.1")
    assert result.exit_code == 1 and "no experiment 0.1.1" in result.output
    # A draft that was launched once (a pid recorded) is evidence: refused.
    from minimind.rundir import update_state

    update_state(lab.run_dir("0.1.0"), started_at=time.time())
    before = tree(lab.root)
    result = invoke(lab, "discard", "0.1.0")
    assert result.exit_code == 3 and "it was launched" in result.output
    assert tree(lab.root) == before


# --- resume reads the checkpoint first ------------------------------------------------------

def test_resume_refuses_a_checkpoint_it_cannot_resume(lab):
    assert invoke(lab, "new", "0.1.0", "--goal", GOAL, "--hypothesis", HYP, "--no-launch").exit_code == 0
    from minimind.rundir import current, update_state

    run_dir = lab.run_dir("0.1.0")
    update_state(run_dir, state="stopped", pid=1, proc_start=0)
    (run_dir / "exit_code").write_text("10\n")
    ckpt = run_dir / "checkpoints"
    ckpt.mkdir()
    (ckpt / "last.pth").write_bytes(b"PK\x03\x04 not a whole checkpoint")
    before = tree(lab.root)
    result = invoke(lab, "resume", "0.1.0")
    assert result.exit_code == 1 and "truncated or corrupted" in result.output, result.output
    assert tree(lab.root) == before and current(run_dir)[0] == "stopped"
    import torch

    torch.save({"format": "minimind-checkpoint-1", "module": "model_9_9_9", "step": 4}, ckpt / "last.pth")
    before = tree(lab.root)
    result = invoke(lab, "resume", "0.1.0")
    assert result.exit_code == 1 and "written by module model_9_9_9" in result.output, result.output
    assert tree(lab.root) == before and current(run_dir)[0] == "stopped"


def test_resume_waits_for_the_stopped_pipeline_to_end(lab, monkeypatch):
    """A run recorded `stopped` whose pipeline still lives (it writes its exit code last) is not relaunched."""
    import lifecycle.resume
    from minimind.rundir import process_start_time, update_state

    assert invoke(lab, "new", "0.1.0", "--goal", GOAL, "--hypothesis", HYP, "--no-launch").exit_code == 0
    ending = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        update_state(lab.run_dir("0.1.0"), state="stopped", pid=ending.pid, pgid=ending.pid,
                     proc_start=process_start_time(ending.pid))
        monkeypatch.setattr(lifecycle.resume, "ENDING_WAIT_S", 0.5)
        before = tree(lab.root)
        result = invoke(lab, "resume", "0.1.0")
        assert result.exit_code == 1 and "is still ending" in result.output, result.output
        assert tree(lab.root) == before
    finally:
        ending.kill()
        ending.wait()


# --- the trained lab: a failed review, required files, commits, a clone ---------------------

def test_review_that_fails_writes_nothing_and_commit_needs_every_file(trained, monkeypatch):
    import lifecycle.document.record

    lab = trained
    run_dir = lab.run_dir("0.1.1")
    config = run_dir / "config.yaml"
    kept = config.read_bytes()
    config.unlink()
    try:
        before = tree(lab.root)
        result = invoke(lab, "review", "0.1.1", "--approve")
        assert result.exit_code != 0 and "runs/0.1.1/config.yaml is missing" in result.output, result.output
        assert tree(lab.root) == before  # no review.json, no reviewed flag, no lesson, no record change
        assert not (run_dir / "review.json").exists()
        result = invoke(lab, "commit", "0.1.1", "--yes")
        assert result.exit_code == 3 and "lacks runs/0.1.1/config.yaml" in result.output, result.output
        assert tree(lab.root) == before
    finally:
        config.write_bytes(kept)
    # A failure inside the approval itself is undone as well: after review.json is written
    # (the flag cannot be set), and after the lesson is accepted with --accept-lesson (the record cannot
    # be rendered).
    from lifecycle import review as review_module

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    (run_dir / "lesson.json").write_text(json.dumps({"experiment": "0.1.1", "text": "a lesson", "evidence": "e",
                                                     "status": "proposed"}))
    for module, name in ((review_module, "update_state"), (lifecycle.document.record, "write_record")):
        before = tree(lab.root)
        with monkeypatch.context() as patch:
            patch.setattr(module, name, broken)
            with pytest.raises(RuntimeError):
                review_module.review_experiment(lab, "0.1.1", True, False, show=False, accept_lesson=True)
        assert tree(lab.root) == before, name
    (run_dir / "lesson.json").unlink()


def test_clone_shows_committed_experiments(trained, tmp_path):
    lab = trained
    for version in ("0.1.0", "0.1.1"):
        assert invoke(lab, "review", version, "--approve").exit_code == 0
        result = invoke(lab, "commit", version)
        assert result.exit_code == 0, result.output
    assert "runs/0.1.1/state.committed.json" in _git(lab.root, "show", "--name-only", "--format=", "HEAD")
    original = _status(lab)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(lab.root), str(clone)], check=True)
    from minimind.lab import Lab

    copy = Lab(clone)
    assert not (clone / "runs" / "0.1.0" / "state.json").exists()  # git ignores it
    rows = _status(copy)
    assert list(rows) == ["0.1.0", "0.1.1"]
    for version in rows:
        row, was = rows[version], original[version]
        assert row["state"] == "finished" and row["state_from"] == "commit"
        assert row["committed"] and row["reviewed"] and row["evaluated"] and row["analysed"]
        assert (row["base"], row["stage"], row["step"], row["total_steps"]) == \
            (was["base"], was["stage"], was["step"], was["total_steps"])
        assert row["pid"] is None
    assert rows["0.1.1"]["base"] == "0.1.0"
    table = " ".join(invoke(copy, "status").output.split())
    assert "* as committed: this copy has no state.json" in table
    history = {r["version"]: r for r in json.loads(invoke(copy, "history", "--json").output)}
    theirs = {r["version"]: r for r in json.loads(invoke(lab, "history", "--json").output)}
    for version in ("0.1.0", "0.1.1"):
        assert history[version]["verdict"] and history[version]["verdict"] == theirs[version]["verdict"]
        assert history[version]["state"] == "finished" and history[version]["committed"]
    result = invoke(copy, "compare", "0.1.0", "0.1.1", "--plot", str(tmp_path / "cmp.png"))
    assert result.exit_code == 0, result.output
    assert "learning_rate" in result.output and "inference_loss" in result.output
    result = invoke(copy, "new", "0.1.2", "--goal", GOAL, "--hypothesis", HYP, "--no-launch")
    assert result.exit_code == 0, result.output
    assert "base 0.1.1" in result.output
    # A finished run cannot be discarded, in the clone or in the lab.
    for where in (copy, lab):
        result = invoke(where, "discard", "0.1.1")
        assert result.exit_code == 3 and "finished" in result.output
    # A state.json lost in the original lab: the committed state is shown, and said to be.
    (lab.run_dir("0.1.0") / "state.json").unlink()
    row = _status(lab)["0.1.0"]
    assert row["state"] == "finished" and row["state_from"] == "commit" and "as committed" in row["state_note"]
