"""The memory-entropy guardrail sees fixation: a run whose positions all choose the same
entries is flagged in danger, one whose positions choose spread entries is not, and the
candidate-softmax entropy is reported beside it, never judged."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import helpers_train as h

QUERY_LINE = "        query = self.query(x)  # (N, kd)\n"
# every position asks the same question, so every position chooses the same entry (lab 1.4.3's failure, forced)
FIXED = "        query = self.query(x) * 0 + 1.0  # (N, kd): forced fixation\n"
# every position asks its own question: the chosen entries spread over the bank
SPREAD = ("        query = self.query(x) + 10 * torch.randn(x.shape[0], self.query.out_features,\n"
          "                                                 generator=torch.Generator().manual_seed(x.shape[0])).to(x)\n")
MODEL = {"knowledge_num": 1024, "num_candidates": 32}  # 32 candidates: their softmax entropy is at most ln 32 = 3.47


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return h.shared_data(tmp_path_factory)


def _run(root: Path, data_dir: Path, query: str) -> Path:
    lab = h.make_lab(root, data_dir)
    snapshot = lab / "models" / f"{h.MODULE}.py"
    text = snapshot.read_text(encoding="utf-8")
    assert text.count(QUERY_LINE) == 1
    snapshot.write_text(text.replace(QUERY_LINE, query), encoding="utf-8")
    from models.model import ModelConfig

    full = ModelConfig(**{**h.TINY_MODEL, **MODEL}).to_dict()  # every field, as the record shows them
    run_dir = h.write_config(lab, model=full, train={"max_steps": 4, "eval_interval": 0, "save_interval": 4},
                             eval={"chat_probes": 0})
    assert h.run_train(run_dir) == 0, h.tail(run_dir / "train.log")
    return run_dir


@pytest.fixture(scope="module")
def fixed_run(tmp_path_factory, data_dir) -> Path:
    return _run(tmp_path_factory.mktemp("fixed"), data_dir, FIXED)


def test_forced_fixation_is_flagged_in_danger(fixed_run):
    guard = h.state(fixed_run)["guardrails"]["memory_entropy"]
    assert guard["level"] == "danger" and guard["value"] == pytest.approx(0.0, abs=1e-6)
    assert guard["measure"] == "selection_entropy" and guard["candidate_entropy"] > 0
    rows = h.train_rows(fixed_run)
    assert rows[0]["guardrail_changes"]["memory_entropy"]["to"] == "danger"
    assert all(r["memory/selection_distinct"] == pytest.approx(1 / 64) for r in rows)  # one entry per window
    assert "guardrail memory_entropy 0 < 2 (danger)" in (fixed_run / "train.log").read_text()


def test_spread_selection_is_safe(tmp_path, data_dir):
    run_dir = _run(tmp_path / "lab", data_dir, SPREAD)
    guard = h.state(run_dir)["guardrails"]["memory_entropy"]
    assert guard["level"] == "safe" and guard["value"] > 3.0
    assert all(r["memory/selection_entropy"] > 3.0 for r in h.train_rows(run_dir))


def test_eval_and_status_show_both_measures(fixed_run):
    from lifecycle.status import summary
    from minimind.lab import Lab

    done = subprocess.run([h.PY, "-m", "training.evaluate", "--run-dir", str(fixed_run)], cwd=h.REPO, env=h.env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    ev = json.loads((fixed_run / "eval.json").read_text())
    assert ev["memory_entropy"] == pytest.approx(0.0, abs=1e-6) and ev["memory_selection_distinct"] == pytest.approx(1 / 64)
    assert ev["memory_candidate_entropy"] > 0
    assert ev["guardrails"]["memory_entropy"] == {"value": ev["memory_entropy"], "level": "danger",
                                                  "measure": "selection_entropy",
                                                  "candidate_entropy": ev["memory_candidate_entropy"]}
    info = summary(Lab(fixed_run.parent.parent), fixed_run.name)
    assert info["guardrails"]["memory_entropy"]["level"] == "danger"
    assert info["guardrails"]["memory_entropy"]["candidate_entropy"] == ev["memory_candidate_entropy"]


OLD_EVAL = {"val_loss": 8.0, "memory_entropy": 3.45, "memory_coverage": 0.021,
            "memory": {"entropy": 3.45, "l0/entropy": 3.46, "l1/entropy": 3.44, "l1/coverage": 0.021},
            "guardrails": {"memory_entropy": {"value": 3.45, "level": "safe"}}}


def test_record_status_and_memory_show_read_an_older_eval_as_candidate_entropy(fixed_run, tmp_path):
    """An eval.json from before selection diversity: its "safe" 3.45 was the candidates' entropy,
    so nothing shows it as the guardrail; it is shown as the candidate-softmax entropy."""
    import shutil

    from lifecycle.memory import selection_lines
    from lifecycle.document.record import record_context, render_record
    from lifecycle.status import summary
    from minimind.lab import Lab

    lab_root = tmp_path / "lab"
    shutil.copytree(fixed_run.parent.parent, lab_root, ignore=shutil.ignore_patterns("checkpoints"))
    run_dir = lab_root / "runs" / fixed_run.name
    (run_dir / "eval.json").write_text(json.dumps(OLD_EVAL), encoding="utf-8")
    state = h.state(run_dir)
    state["guardrails"]["memory_entropy"] = {"value": 3.45, "level": "safe"}  # as an older trainer wrote it
    (run_dir / "state.json").write_text(json.dumps(state), encoding="utf-8")
    lab = Lab(lab_root)

    guard = summary(lab, run_dir.name)["guardrails"]["memory_entropy"]
    assert guard == {"value": None, "level": "n/a", "candidate_entropy": 3.45}
    selection = record_context(lab, run_dir.name)["r"]["evaluation"]["selection"]
    assert selection["worst"] is None and selection["candidate"] == 3.45 and selection["window"] is None
    assert [(l["layer"], l["selection"], l["candidate"]) for l in selection["layers"]] == [(0, None, 3.46), (1, None, 3.44)]
    record = render_record(lab, run_dir.name, "en")
    assert "predates the selection measure" in record
    assert "| memory_entropy | — | ⚪ n/a |" in record and "| 1 | — | — | 3.44 |" in record
    lines = selection_lines([[[(5, 0.5), (6, 0.5)]]] * 3, OLD_EVAL)
    assert lines[0].startswith("Layer 0: the 3 positions chose 1 distinct entries (selection entropy 0.000")
    assert "predates the selection measure" in lines[1] and "candidate-softmax entropy 3.450" in lines[1]


def test_record_and_compare_show_the_selection_beside_the_candidates(fixed_run, tmp_path):
    from click.testing import CliRunner

    from cli import main
    from lifecycle.memory import selection_lines
    from lifecycle.document.record import render_record
    from minimind.lab import Lab

    if not (fixed_run / "eval.json").exists():
        test_eval_and_status_show_both_measures(fixed_run)
    ev = json.loads((fixed_run / "eval.json").read_text())
    record = render_record(Lab(fixed_run.parent.parent), fixed_run.name, "en")
    assert "memory_entropy is the selection entropy of the worst memory layer" in record
    assert "| memory_entropy | 0 | 🔴 danger |" in record
    assert f"| 0 | 0 | 1.6% | {ev['memory']['l0/candidate_entropy']:.4g} |" in record
    lines = selection_lines([[[(5, 0.5), (6, 0.5)]], [[(7, 0.5), (5, 0.5)]]], ev)
    assert lines[0].startswith("Layer 0: the 2 positions chose 2 distinct entries (selection entropy 0.693")
    assert "64-position windows) 0.000 🔴 danger" in lines[1]

    old = fixed_run.parent / "0.0.9"
    old.mkdir()
    for name in ("config.yaml", "state.json"):
        (old / name).write_text((fixed_run / name).read_text())
    (old / "eval.json").write_text(json.dumps(OLD_EVAL))
    out = CliRunner().invoke(main, ["compare", "0.0.9", fixed_run.name], env={"MINIMIND_LAB": str(fixed_run.parent.parent)})
    assert out.exit_code == 0, out.output
    rows = {line.split("│")[1].strip(): line for line in out.output.splitlines() if line.count("│") >= 3}
    assert "3.45" in rows["memory_candidate_entropy"]  # the old number compared as what it was
    assert "3.45" not in rows["memory_entropy"] and "0" in rows["memory_entropy"]


def test_a_version_after_the_entropy_guardrail_is_not_quoted_as_its_value():
    # the offline analysis names the 1.4.3 failure right after a memory_entropy danger
    from agent.prose import unknown_numbers

    text = "处于危险的护栏:memory_entropy = 0 (低于 2 nats)。这是 1.4.3 失败模式的征兆。"
    assert unknown_numbers(text, [("eval.memory_entropy", 0.0)]) == []
    assert unknown_numbers("memory_entropy = 1.4 here", [("eval.memory_entropy", 0.0)]) == ["entropy 1.4"]
