"""DeepSpeed ZeRO-2 with two processes on DeepSpeed's CPU accelerator (gloo), accumulation 2,
through `accelerate launch` as the run script starts it: every rank knows it is one of two
(it reads its own half of the data and only rank 0 writes), DeepSpeed updates once per loop
step, and the losses are those of plain two-process DDP on the same config."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

import helpers_train as h

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install -e '.[gpu]')")

STEPS = 4


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    return h.make_lab(tmp_path_factory.mktemp("lab"), h.shared_data(tmp_path_factory))


def _start(lab: Path, version: str, deepspeed: str | None):
    """A two-process run of `version` (DeepSpeed ZeRO-2 or plain DDP), started, not waited for."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch = {"num_processes": 2, **({"deepspeed": deepspeed} if deepspeed else {})}
    run_dir = h.write_config(lab, version, train={"max_steps": STEPS, "accumulation_steps": 2, "batch_size": 4,
                                                  "log_interval": 1, "eval_interval": 0, "save_interval": STEPS},
                             launch=launch)
    launcher = [h.PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--main_process_port", str(port)]
    return run_dir, h.start_train(run_dir, launcher=launcher)


def _wait(run_dir: Path, proc) -> None:
    try:
        rc = proc.wait(timeout=170)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        raise AssertionError(f"training did not finish in 170s:\n{h.tail(run_dir / 'train.log')}")
    assert rc == 0, h.tail(run_dir / "train.log")


def test_two_process_zero2_counts_both_ranks_and_matches_ddp(lab, monkeypatch):
    # both at once: most of each run is start-up (imports), which the two overlap
    ddp_dir, ddp_proc = _start(lab, "0.5.0", None)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # as run.sh exports it for launch.cpu + DeepSpeed
    ds_dir, ds_proc = _start(lab, "0.4.0", "zero2")
    _wait(ds_dir, ds_proc)
    _wait(ddp_dir, ddp_proc)
    log = (ds_dir / "train.log").read_text()
    assert "processes: 2" in log and log.count("training finished") == 1, h.tail(ds_dir / "train.log")
    rows = h.train_rows(ds_dir)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # rank 0 alone writes: each step once
    assert [r["deepspeed/global_steps"] for r in rows] == [r["step"] for r in rows]
    used = json.loads((ds_dir / "ds_config.json").read_text())
    assert used["train_micro_batch_size_per_gpu"] == 4 and used["gradient_accumulation_steps"] == 2
    shards = sorted(p.name for p in (ds_dir / "checkpoints" / "deepspeed" / f"step{STEPS}").glob("*optim_states.pt"))
    assert len(shards) == 2, shards
    assert (ds_dir / "checkpoints" / f"rank1.step{STEPS}.pth").exists()
    ddp = h.train_rows(ddp_dir)
    assert [r["step"] for r in ddp] == [r["step"] for r in rows]
    for a, b in zip(rows, ddp):
        assert a["loss_ce"] == pytest.approx(b["loss_ce"], abs=1e-4), (a["step"], a["loss_ce"], b["loss_ce"])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
