"""Evaluation shows where it is: a line per part on stdout (the terminal, or train.log for
`log -f`), the part and its count as state.json's phase for `status`, a heartbeat so a live
evaluation is never called hung, and `--num-samples N` prints the N continuations."""

from __future__ import annotations

import os
import re
import time

import pytest
import torch

import helpers_train as h

PARTS = ("validation loss", "inference decoding", "samples", "recall", "chat QA", "retrieval")


@pytest.fixture
def evaluating_run(tmp_path, bundled_data):
    """A run whose training ended ten minutes ago (its last heartbeat), now evaluating: state
    running, its pipeline alive (this process), a checkpoint in place."""
    from minimind.config import load_config
    from minimind.lab import Lab
    from minimind.rundir import process_start_time, update_state
    from models.registry import build_model, save_checkpoint
    from training.checkpoint import model_part

    root = h.make_lab(tmp_path / "lab", bundled_data)
    run_dir = h.write_config(root, eval={"chat_probes": 4})
    cfg = load_config(run_dir / "config.yaml")
    lab = Lab(root)
    torch.manual_seed(0)
    model = build_model(lab.models_dir, cfg.model_module, cfg.model)
    (run_dir / "checkpoints").mkdir()
    save_checkpoint(run_dir / "checkpoints" / "last.pth", {**model_part(cfg.model_module, model), "step": 0})
    update_state(run_dir, state="running", phase="evaluate", pid=os.getpid(), pgid=os.getpid(),
                 proc_start=process_start_time(os.getpid()), heartbeat=time.time() - 600, step=30, total_steps=30)
    return lab, run_dir


def test_evaluation_reports_each_part_and_keeps_the_run_alive_in_status(evaluating_run, monkeypatch, capsys):
    import training.evaluate as evaluate
    import training.signals as signals
    from lifecycle.status import summary
    from minimind import rundir

    lab, run_dir = evaluating_run
    seen = []

    def recording(target, **changes):
        state = rundir.update_state(target, **changes)
        if "phase" in changes:
            row = summary(lab, run_dir.name)
            seen.append((changes["phase"], row["state"], row["stale_heartbeat"]))
        return state

    monkeypatch.setattr(signals, "update_state", recording)
    monkeypatch.setattr(evaluate, "update_state", recording)
    started = time.time()
    assert evaluate.main(["--run-dir", str(run_dir), "--max-probes", "12", "--num-samples", "2"]) == 0
    out = capsys.readouterr().out
    phases = [p for p, _, _ in seen]
    for part in PARTS:  # each part was the phase while it ran, and status called the run alive
        assert any(p.startswith(f"evaluate: {part}") for p in phases), (part, phases)
        assert re.search(rf"^\[eval +[\d.]+s\] {part} \.\.\.$", out, re.M), (part, out)
        assert re.search(rf"^\[eval +[\d.]+s\] {part} (\d+/\d+ \w+ )?done in [\d.]+ s$", out, re.M), (part, out)
    assert all(state == "running" and not stale for _, state, stale in seen), seen
    assert re.search(r"^\[eval +[\d.]+s\] recall (\d+)/\1 probes done", out, re.M)  # with its count
    state = rundir.read_state(run_dir)
    assert state.phase == "evaluate" and state.heartbeat >= started  # the pipeline's phase is back
    # --num-samples 2: both prompts with their continuations, as eval_model.py shows them
    assert out.count("continuation:") == 2 and "[2/2] prompt:" in out
    ev = rundir.read_json(run_dir / "eval.json")
    assert [s["generated"] for s in ev["samples"]] == re.findall(r"continuation: (.*)$", out, re.M)


def test_the_phase_carries_the_count_and_status_shows_it(evaluating_run, monkeypatch, capsys):
    from lifecycle.status import show_status
    from minimind.rundir import update_state
    from training.evaluate import EvalProgress

    lab, run_dir = evaluating_run
    progress = EvalProgress(run_dir)
    tick = progress.start("recall")
    tick(120, 600)
    assert progress.phase() == "evaluate: recall 120/600"
    update_state(run_dir, heartbeat=time.time(), **progress.as_state())
    monkeypatch.setenv("COLUMNS", "200")
    show_status(lab, None, as_json=False)
    out = capsys.readouterr().out
    assert "evaluate: recall 120/600" in out and "stale" not in out
    show_status(lab, run_dir.name, as_json=False)
    assert "phase evaluate: recall 120/600" in capsys.readouterr().out
