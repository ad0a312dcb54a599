"""DeepSpeed's numerics on its CPU accelerator (DS_ACCELERATOR=cpu): evaluations after ZeRO-2
steps read the current weights, gradients accumulate in fp32, checkpoints keep the fp32
masters, and ZeRO-2 with bf16 trains like DDP with autocast."""

from __future__ import annotations

import json
import os
import socket

import pytest

from helpers_train import make_lab, run_train, shared_data, tail, write_config

deepspeed = pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install -e '.[gpu]')")

TINY = dict(preset="memory", dim=32, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=300, max_seq_len=32,
            knowledge_num=64, knowledge_length=6, knowledge_dim=16, num_candidates=4, ema_update_freq=2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _zero2_tables(rank: int, port: int, out: str) -> None:
    """ZeRO-2 (fp32, one process) trains a few steps; after each, an inference forward reads
    the value tables. Saves each step's cached table beside a fresh projection."""
    os.environ.update(DS_ACCELERATOR="cpu", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import deepspeed as ds
    import torch

    from models.model import MiniMindLM, ModelConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MiniMindLM(ModelConfig(**TINY))
    engine, *_ = ds.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=0.02), config={
        "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": 2}, "steps_per_print": 10**9})
    batch = torch.randint(1, 300, (4, 24), generator=torch.Generator().manual_seed(1))
    layer = model.memory_layers()[0][1]
    results = []
    for step in range(1, 4):
        engine.train()
        loss = engine(batch).logits.float().logsumexp(-1).mean()
        engine.backward(loss)
        engine.step()
        model.after_optimizer_step(step)
        engine.eval()
        with torch.no_grad():
            model(batch)  # the evaluation's forward: fills (or reuses) the cache
            results.append((layer._table.clone(), layer._project(model.tok_embeddings.weight)))
    torch.save(results, f"{out}/tables.pt")


def test_zero2_evaluation_after_steps_reads_a_fresh_projection(tmp_path):
    import torch
    import torch.multiprocessing as mp

    mp.spawn(_zero2_tables, args=(_free_port(), str(tmp_path)), nprocs=1, join=True)
    results = torch.load(tmp_path / "tables.pt", weights_only=True)
    assert not torch.equal(results[0][1], results[-1][1])  # the weights did move: the comparison means something
    for step, (cached, fresh) in enumerate(results, start=1):
        assert torch.equal(cached, fresh), f"step {step}: cached table differs by {(cached - fresh).abs().max():.2e}"


@pytest.fixture(scope="module")
def ds_run(tmp_path_factory):
    """A ZeRO-2 run (fp32, one process) with a large learning rate and periodic evaluations."""
    lab = make_lab(tmp_path_factory.mktemp("dslab"), shared_data(tmp_path_factory))
    run_dir = write_config(lab, train={"max_steps": 20, "eval_interval": 10, "save_interval": 10,
                                       "learning_rate": 0.02},
                           launch={"deepspeed": "zero2"})
    assert run_train(run_dir, timeout=300) == 0, tail(run_dir / "train.log")
    return lab, run_dir


def test_periodic_evaluation_equals_a_fresh_evaluation_of_the_checkpoint(ds_run, tmp_path):
    from minimind.config import load_config
    from minimind.lab import Lab
    from training.evaluate import evaluate

    lab, run_dir = ds_run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = {r["step"]: r["eval/val_loss"] for r in rows if "eval/val_loss" in r}
    assert sorted(evals) == [10, 20]
    cfg = load_config(run_dir / "config.yaml")
    fresh = evaluate(Lab(lab), cfg, run_dir / "checkpoints" / "last.pth", None, {}, tmp_path / "eval.json", None,
                     max_probes=2)
    from models.registry import read_checkpoint

    assert read_checkpoint(run_dir / "checkpoints" / "last.pth")["step"] == 20
    assert evals[20] == pytest.approx(fresh["val_loss"], abs=1e-5), (evals, fresh["val_loss"])


# --- exact selection: TF32 off for the sub-key scores, on elsewhere ------------------------


def test_sub_key_scoring_turns_tf32_off_and_restores_it(monkeypatch):
    """On any device: inside lookup's scoring matmul TF32 is off, around it the caller's
    setting holds (the trainer turns TF32 on for everything else)."""
    import torch

    from models.model import MiniMindLM, ModelConfig

    seen = []
    bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a, **k: (seen.append(torch.backends.cuda.matmul.allow_tf32), bmm(*a, **k))[1])
    model = MiniMindLM(ModelConfig(**TINY)).eval()
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with torch.no_grad():
            model(torch.randint(1, 300, (2, 12)))
        assert torch.backends.cuda.matmul.allow_tf32 is True  # restored: the rest of the step keeps TF32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    assert seen == [False] * TINY["n_layers"]  # one scoring matmul per memory layer, each without TF32


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="TF32 exists only on CUDA")
def test_candidates_with_tf32_enabled_equal_fp32_on_cuda():
    import torch

    from models.model import MiniMindLM, ModelConfig

    torch.manual_seed(0)
    model = MiniMindLM(ModelConfig(**{**TINY, "knowledge_num": 1024 ** 2, "knowledge_dim": 128,
                                      "num_candidates": 32})).cuda().eval()
    layer = model.memory_layers()[0][1]
    query = torch.randn(4096, 128, device="cuda")
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        _, exact = layer.lookup(query)
        torch.backends.cuda.matmul.allow_tf32 = True
        _, with_tf32 = layer.lookup(query)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    assert torch.equal(exact, with_tf32)
