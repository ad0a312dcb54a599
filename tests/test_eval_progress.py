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


# --- eval --model-path of a run's checkpoint: the run's split -----------------------------

def _val_keys(ev) -> list[int]:
    return ev["per_item"]["val"]["keys"]


def test_model_path_of_a_runs_checkpoint_uses_the_runs_split(evaluating_run, tmp_path):
    """Reported: `eval --model-path runs/V/...` split the documents by the lab's settings (no
    split seed) instead of the run's pinned one: 8.7244 against 8.7150 on the same weights."""
    import shutil

    import training.evaluate as evaluate
    from minimind.config import load_config
    from minimind.rundir import read_json
    from minimind.settings import SPLIT_SEED
    from training.data import split_documents
    from training.runtime import load_corpus, split_seed

    import yaml

    lab, run_dir = evaluating_run
    settings = yaml.safe_load(lab.settings_path.read_text())  # the lab's evaluation sized as the run's
    settings["train"].update(batch_size=8)
    settings["eval"].update(max_val_batches=2, chat_probes=4, num_samples=3, prompt_tokens=12, max_new_tokens=8)
    lab.settings_path.write_text(yaml.safe_dump(settings))
    ckpt = run_dir / "checkpoints" / "last.pth"
    assert evaluate.main(["--run-dir", str(run_dir), "--max-probes", "4"]) == 0
    by_run = read_json(run_dir / "eval.json")
    assert evaluate.main(["--model-path", str(ckpt), "--lab", str(lab.root), "--model-type", "model_0_1_0",
                          "--max-probes", "4"]) == 0
    by_path = read_json(ckpt.with_name("last.eval.json"))
    cfg = load_config(run_dir / "config.yaml")
    assert split_seed(cfg) != lab.settings().train.seed  # the lab's own settings would split otherwise
    assert _val_keys(by_path) == _val_keys(by_run)
    assert by_path["val_loss"] == pytest.approx(by_run["val_loss"], rel=1e-6)
    # a checkpoint outside any run: the split `new` pins for the lab's experiments
    outside = tmp_path / "elsewhere.pth"
    shutil.copyfile(ckpt, outside)
    assert evaluate.main(["--model-path", str(outside), "--lab", str(lab.root), "--max-probes", "4"]) == 0
    corpus = load_corpus(lab, cfg)
    _, val_idx = split_documents(corpus.cache.num_docs, cfg.data.val_fraction, SPLIT_SEED)
    assert _val_keys(read_json(tmp_path / "elsewhere.eval.json")) == [int(i) for i in val_idx][:len(_val_keys(by_run))]
