"""The trainer end to end on a tiny lab: it learns, resumes exactly, stops on signals and
guardrails, refuses bad checkpoints, and keeps its files honest."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import helpers_train as h


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return h.shared_data(tmp_path_factory)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """One complete 30-step run shared by the tests that only read its outputs."""
    return h.shared_finished_run(tmp_path_factory)


@pytest.fixture
def lab(tmp_path, data_dir) -> Path:
    return h.make_lab(tmp_path / "lab", data_dir)


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early ({proc.returncode}):\n{h.tail(run_dir / 'train.log')}")
        try:
            if any(r["step"] >= step for r in h.train_rows(run_dir)):
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached:\n{h.tail(run_dir / 'train.log')}")


# --- a normal run ---------------------------------------------------------------------

def test_run_trains_and_loss_falls(finished_run):
    rows = h.train_rows(finished_run)
    assert [r["step"] for r in rows] == list(range(2, 31, 2))
    for key in ("step", "epoch", "loss", "loss_ce", "lr", "tokens_per_s", "time", "elapsed_s",
                "memory/selection_entropy", "memory/selection_distinct", "memory/candidate_entropy",
                "memory/l1/selection_entropy", "memory/coverage", "memory/frozen_ratio"):
        assert key in rows[-1], key
    first, last = rows[0]["loss_ce"], sum(r["loss_ce"] for r in rows[-3:]) / 3
    assert last < first - 1.0, (first, last)
    evals = [r for r in h.metrics(finished_run) if "eval/val_loss" in r]
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert evals[-1]["eval/val_loss"] < evals[0]["eval/val_loss"]


def test_run_writes_state_log_and_checkpoints(finished_run):
    state = h.state(finished_run)
    assert state["step"] == state["total_steps"] == 30
    assert state["phase"] == "trained" and state["eta_s"] == 0
    # The last heartbeat comes after the last logged step (the trainer's final state write),
    # whenever this test reads it.
    assert math.isfinite(state["last_loss"]) and state["heartbeat"] >= h.train_rows(finished_run)[-1]["time"]
    assert {"train_loss", "memory_entropy", "train_inference_ratio", "repetition_rate"} <= set(state["guardrails"])
    log = (finished_run / "train.log").read_text()
    assert "git commit:" in log and "model module: model_0_1_0 sha256 " in log
    assert "torch " in log and "accelerate " in log and "processes: 1" in log
    assert "preset: memory" in log  # the resolved config is in the log
    assert "step 30/30 [########################] 100.0%" in log and "ETA" in log
    import torch

    last = torch.load(finished_run / "checkpoints" / "last.pth", weights_only=True)
    assert last["step"] == 30 and last["module"] == "model_0_1_0"
    assert {"optimizer", "scheduler", "rng", "best", "model_config", "split", "memory_pending"} <= set(last)
    assert "memory_bank" in last["model"] and "memory_frozen" in last["model"]
    best = torch.load(finished_run / "checkpoints" / "pretrain_32.pth", weights_only=True)
    assert best["best"]["metric"] == "val_loss" and best["best"]["step"] == 30
    from models.registry import load_checkpoint  # the lab's own loader reads our files

    model, data = load_checkpoint(finished_run / "checkpoints" / "last.pth", finished_run.parent.parent / "models")
    assert data["step"] == 30 and model.config.dim == 32


def test_each_metrics_line_is_strict_json(finished_run):
    for line in (finished_run / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-finite {c} in metrics"))


# --- kill -9 and resume ---------------------------------------------------------------

def test_kill_9_then_resume_finishes_with_each_step_once(lab, finished_run):
    run_dir = h.write_config(lab)  # the same config as finished_run
    proc = h.start_train(run_dir)
    wait_for_step(run_dir, 14, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    killed_at = max(r["step"] for r in h.train_rows(run_dir))
    assert killed_at < 30
    rc = h.run_train(run_dir, "--resume", timeout=150)
    assert rc == 0, h.tail(run_dir / "train.log")
    steps = [r["step"] for r in h.train_rows(run_dir)]
    assert steps == list(range(2, 31, 2)), steps   # none missing, none twice
    evals = [r["step"] for r in h.metrics(run_dir) if "eval/val_loss" in r]
    assert evals == [10, 20, 30]
    assert "resuming from step" in (run_dir / "train.log").read_text()
    # Exact resume: data position, optimizer, scheduler, RNG and memory bank all restored,
    # so the resumed run computes what the uninterrupted one did.
    for mine, ref in zip(h.train_rows(run_dir), h.train_rows(finished_run)):
        assert mine["loss_ce"] == pytest.approx(ref["loss_ce"], rel=1e-4, abs=1e-5), mine["step"]
        assert mine["lr"] == pytest.approx(ref["lr"])
    # the resumed run knows the guardrail levels it had (an H200 run logged every eval
    # guardrail again as "was unset" after its resume)
    def changes(rd):
        return [(r["step"], sorted(r["guardrail_changes"])) for r in h.metrics(rd) if r.get("guardrail_changes")]
    assert changes(run_dir) == changes(finished_run)


def test_resume_without_checkpoint_starts_from_zero(lab):
    run_dir = h.write_config(lab, train={"max_steps": 4, "eval_interval": 0})
    assert h.run_train(run_dir, "--resume") == 0, h.tail(run_dir / "train.log")
    assert [r["step"] for r in h.train_rows(run_dir)] == [2, 4]


# --- stop by signal, stop by guardrail -----------------------------------------------

def test_sigterm_checkpoints_and_exits_10(lab):
    run_dir = h.write_config(lab, train={"max_steps": 400, "eval_interval": 0, "save_interval": 1000})
    proc = h.start_train(run_dir)
    wait_for_step(run_dir, 4, proc)
    sent = time.time()
    os.killpg(proc.pid, signal.SIGTERM)
    rc = proc.wait(timeout=30)
    assert rc == 10, h.tail(run_dir / "train.log")
    assert time.time() - sent < 30
    state = h.state(run_dir)
    assert state["state"] == "stopped" and "SIGTERM" in state["stop_reason"]
    import torch

    last = torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)
    assert last["step"] == state["step"] and 4 <= last["step"] < 400


def test_guardrail_danger_with_stop_action_exits_11(lab):
    # danger threshold far above any real loss: the first log step is already "collapsed"
    guard = {"train_loss": {"safe": 100.0, "danger": 50.0, "action": "stop"}}
    run_dir = h.write_config(lab, train={"max_steps": 40}, guardrails=guard)
    rc = h.run_train(run_dir)
    assert rc == 11, h.tail(run_dir / "train.log")
    state = h.state(run_dir)
    assert state["state"] == "guardrail_stopped"
    assert state["stop_reason"].startswith("train_loss ") and state["stop_reason"].endswith("< 50 (danger)")
    assert state["guardrails"]["train_loss"]["level"] == "danger"
    assert (run_dir / "checkpoints" / "last.pth").exists()
    rows = h.train_rows(run_dir)
    assert rows[-1]["step"] == 2 and rows[-1]["guardrail_changes"]["train_loss"]["to"] == "danger"


def test_flag_action_does_not_stop(lab):
    guard = {"train_loss": {"safe": 100.0, "danger": 50.0, "action": "flag"}}
    run_dir = h.write_config(lab, train={"max_steps": 4, "eval_interval": 0}, guardrails=guard)
    assert h.run_train(run_dir) == 0
    assert h.state(run_dir)["guardrails"]["train_loss"]["level"] == "danger"


# --- bad inputs -----------------------------------------------------------------------

def test_truncated_checkpoint_is_a_one_line_error(lab, finished_run):
    run_dir = h.write_config(lab, train={"max_steps": 4})
    (run_dir / "checkpoints").mkdir()
    blob = (finished_run / "checkpoints" / "last.pth").read_bytes()
    (run_dir / "checkpoints" / "last.pth").write_bytes(blob[: len(blob) // 2])
    done = subprocess.run(h.train_cmd(run_dir, "--resume"), cwd=h.REPO, env=h.env(), capture_output=True,
                          text=True, timeout=90)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: checkpoint ") and "truncated or corrupt" in lines[0]
    assert "Traceback" not in done.stderr


def test_missing_config_is_a_one_line_error(tmp_path):
    done = subprocess.run(h.train_cmd(tmp_path / "runs" / "9.9.9"), cwd=h.REPO, env=h.env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.strip().startswith("Error: ")


# --- SwanLab mirror -------------------------------------------------------------------

def test_swanlab_offline_mode_needs_no_network(lab):
    run_dir = h.write_config(lab, train={"max_steps": 4, "eval_interval": 0}, swanlab={"mode": "offline"})
    assert h.run_train(run_dir) == 0, h.tail(run_dir / "train.log")
    assert (run_dir / "swanlog").is_dir() and any((run_dir / "swanlog").iterdir())
    assert "WARNING swanlab" not in (run_dir / "train.log").read_text()
    assert [r["step"] for r in h.train_rows(run_dir)] == [2, 4]


def test_swanlab_disabled_and_failures_never_stop_training(tmp_path, monkeypatch):
    from training.swan import SwanMirror

    warnings: list[str] = []
    off = SwanMirror("disabled", "p", tmp_path, "x", {}, warnings.append)
    off.log({"loss": 1.0}, 1), off.finish()
    assert off.run is None and warnings == []

    monkeypatch.delenv("SWANLAB_API_KEY", raising=False)
    import swanlab

    def boom(**kwargs):
        assert kwargs["mode"] == "offline"  # cloud without a key never prompts: it goes offline
        raise RuntimeError("no network")

    monkeypatch.setattr(swanlab, "init", boom)
    broken = SwanMirror("cloud", "p", tmp_path, "x", {}, warnings.append)
    broken.log({"loss": 1.0}, 1), broken.finish()
    assert broken.run is None
    assert any("SWANLAB_API_KEY" in w for w in warnings) and any("no network" in w for w in warnings)


def test_trainer_process_leaves_its_process_group(tmp_path, monkeypatch):
    """DeepSpeed makes a process group even for one process; the trainer leaves it on exit
    (NCCL warned of leaked resources at the end of a ZeRO-2 run on an H200)."""
    import socket

    import torch.distributed as dist

    from training import loop, train

    (tmp_path / "config.yaml").write_text("version: 0.0.0\n")

    class Trainer:
        def __init__(self, run_dir, resume=False):
            pass

        def run(self):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
            return 0

    monkeypatch.setattr(loop, "Trainer", Trainer)
    assert train.main(["--run-dir", str(tmp_path)]) == 0
    assert not dist.is_initialized()
