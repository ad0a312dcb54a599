"""Two real CPU processes (gloo DDP) through `accelerate launch --multi_gpu`."""

from __future__ import annotations

from pathlib import Path

import pytest

import helpers_train as h


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    return h.make_lab(tmp_path_factory.mktemp("lab"), h.shared_data(tmp_path_factory))


def test_two_process_run_completes_and_writes_metrics_once(lab):
    run_dir = h.write_config(lab, launch={"num_processes": 2}, train={"max_steps": 12, "eval_interval": 6})
    launcher = [h.PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--main_process_port", "29517"]
    rc = h.run_train(run_dir, launcher=launcher, timeout=180)
    assert rc == 0, h.tail(run_dir / "train.log")
    steps = [r["step"] for r in h.train_rows(run_dir)]
    assert steps == [2, 4, 6, 8, 10, 12]  # rank 0 alone writes: each step once
    assert [r["step"] for r in h.metrics(run_dir) if "eval/val_loss" in r] == [6, 12]
    log = (run_dir / "train.log").read_text()
    assert "processes: 2" in log
    assert log.count("training finished: 12 steps") == 1
    import torch

    last = torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)
    assert last["step"] == 12
    # each process reads its own half of the documents: an epoch is half as many batches
    batches = h_batches(run_dir)
    assert batches == -(-(len_train(lab) // 2) // 8)
    assert h.train_rows(run_dir)[-1]["epoch"] == pytest.approx(12 / batches, abs=1e-4)


def len_train(lab: Path) -> int:
    from training.data import split_documents
    from corpus.prepare import TokenCache

    caches = [p for p in (lab / "data" / "cache").iterdir() if (p / "meta.json").exists() and "pretrain" in (p / "meta.json").read_text()]
    train, _ = split_documents(TokenCache(caches[0]).num_docs, 0.05, h.TINY_TRAIN["seed"])
    return len(train)


def h_batches(run_dir: Path) -> int:
    """Batches per epoch per process, as the trainer logged it."""
    for line in (run_dir / "train.log").read_text().splitlines():
        if "batches per epoch per process" in line:
            return int(line.split(" batches per epoch")[0].split()[-1])
    raise AssertionError("no data line in the log")
