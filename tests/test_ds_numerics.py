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
                           launch={"deepspeed": "zero2", "deterministic": True})
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


# --- DeepSpeed numerics: fp32 accumulation, fp32 masters in checkpoints, bf16 like autocast ---

BF16_STEPS = 20
BF16_TRAIN = {"max_steps": BF16_STEPS, "accumulation_steps": 4, "batch_size": 4, "eval_interval": 0,
              "save_interval": BF16_STEPS, "log_interval": 1, "learning_rate": 3e-3}
# ZeRO-2 computes with bf16 weights (a bf16 residual stream); autocast keeps fp32 weights and
# rounds only inside matmuls. Over 20 steps the two differ by 1.8e-3 at most (measured), on
# losses that fall from 8.8 to 7.3, while autocast and fp32 differ by 4.7e-4.
BF16_TOLERANCE = 5e-3


@pytest.fixture(scope="module")
def bf16_runs(tmp_path_factory):
    """ZeRO-2 with bf16 and accumulation 4, and the default path with bf16 autocast (one
    process each: DDP with one process is this path), 20 steps of the same data."""
    lab = make_lab(tmp_path_factory.mktemp("bf16lab"), shared_data(tmp_path_factory))
    ds = write_config(lab, "0.1.0", train=BF16_TRAIN, launch={"deepspeed": "zero2", "mixed_precision": "bf16"})
    amp = write_config(lab, "0.2.0", train=BF16_TRAIN, launch={"mixed_precision": "bf16"})
    for run_dir in (ds, amp):
        assert run_train(run_dir, timeout=400) == 0, tail(run_dir / "train.log")
    return ds, amp


def test_zero2_bf16_with_accumulation_trains_like_autocast(bf16_runs):
    from helpers_train import train_rows

    ds, amp = (train_rows(run_dir) for run_dir in bf16_runs)
    assert [r["step"] for r in ds] == [r["step"] for r in amp] == list(range(1, BF16_STEPS + 1))
    assert amp[0]["loss_ce"] - amp[-1]["loss_ce"] > 1.0  # it trained: the comparison means something
    gaps = [abs(a["loss_ce"] - b["loss_ce"]) for a, b in zip(ds, amp)]
    assert max(gaps) <= BF16_TOLERANCE, gaps
    used = json.loads((bf16_runs[0] / "ds_config.json").read_text())
    assert used["data_types"]["grad_accum_dtype"] == "fp32" and used["bf16"]["enabled"] is True


def test_zero2_checkpoint_keeps_the_fp32_master_weights(bf16_runs):
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from models.registry import read_checkpoint, weights

    ckpt_dir = bf16_runs[0] / "checkpoints"
    saved = weights(read_checkpoint(ckpt_dir / "last.pth"))
    masters = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir / "deepspeed"), tag=f"step{BF16_STEPS}")
    assert masters
    masters = {name: w for name, w in masters.items() if w.is_floating_point()}  # its file holds the bank too
    for name, master in masters.items():
        assert saved[name].dtype == torch.float32, name
        assert torch.equal(saved[name], master.float()), name  # the optimizer's masters, not bf16 copies
    rounded = [name for name, w in masters.items() if not torch.equal(w.float(), w.bfloat16().float())]
    assert rounded  # masters that bf16 cannot hold: a bf16 checkpoint would have lost them
    best = weights(read_checkpoint(ckpt_dir / "pretrain_32.pth"))
    assert all(best[name].dtype == torch.float32 for name in masters)


def _accumulation_dtype(rank: int, port: int, out: str) -> None:
    """The engine the generated config builds (bf16, ZeRO-2, accumulation 2): the dtypes it
    reports and the one its gradient partition holds after the first micro-batch."""
    os.environ.update(DS_ACCELERATOR="cpu", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import deepspeed as ds
    import torch

    from minimind.config import from_dict
    from models.model import MiniMindLM, ModelConfig
    from training.runtime import deepspeed_config

    torch.set_num_threads(1)
    cfg = from_dict({"version": "0.1.0", "base": None, "model_module": "model_0_1_0", "model": TINY,
                     "train": {"batch_size": 4, "accumulation_steps": 2},
                     "launch": {"cpu": True, "deepspeed": "zero2", "mixed_precision": "bf16"}})
    model = MiniMindLM(ModelConfig(**TINY))
    engine, *_ = ds.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
                               config=deepspeed_config(cfg, sum(p.numel() for p in model.parameters())))
    batch = torch.randint(1, 300, (4, 24), generator=torch.Generator().manual_seed(1))
    engine.backward(engine(batch).logits.float().logsumexp(-1).mean())
    partition = engine.optimizer.averaged_gradients.get(0)
    torch.save({"types": [str(t) for t in engine.get_data_types()],
                "partition": str(getattr(partition, "flat_partition", partition[0] if partition else None).dtype)
                if partition else None}, f"{out}/dtypes.pt")


def test_generated_config_accumulates_bf16_gradients_in_fp32(tmp_path):
    import torch
    import torch.multiprocessing as mp

    mp.spawn(_accumulation_dtype, args=(_free_port(), str(tmp_path)), nprocs=1, join=True)
    seen = torch.load(tmp_path / "dtypes.pt", weights_only=True)
    assert seen["types"] == ["torch.bfloat16", "torch.float32"]  # (weights, gradient accumulation)
    assert seen["partition"] == "torch.float32"


@pytest.mark.parametrize("version, refused", [("0.15.4", True), ("0.19.1", True), ("0.19.2", False),
                                              ("0.19.8", False), ("0.20.0+cu124", False), ("1.0.0rc1", False),
                                              (None, True)])
def test_deepspeed_versions_that_cast_buffers_are_refused(version, refused):
    from training.runtime import deepspeed_version_refusal

    reason = deepspeed_version_refusal(version)
    assert (reason is not None) == refused
    if refused and version:
        assert version in reason and "buffers" in reason and "0.19.2" in reason


def test_new_refuses_an_old_deepspeed_with_the_reason(tmp_path_factory, monkeypatch):
    from importlib import metadata

    import lab_helpers

    lab = lab_helpers.make_lab(tmp_path_factory.mktemp("oldds") / "lab", shared_data(tmp_path_factory))
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "0.16.0" if name == "deepspeed" else real(name))
    result = lab_helpers.invoke(lab, "new", "0.1.0", "--goal", "g", "--hypothesis", "h",
                                "--set", "launch.deepspeed=zero2", "--no-launch")
    assert result.exit_code == 1, result.output
    assert "DeepSpeed >= 0.19.2" in result.output and "found 0.16.0" in result.output
    assert not lab.run_dir("0.1.0").exists()


# --- reproducibility stated -------------------------------------------------------------


def test_state_records_whether_the_run_was_deterministic(ds_run, bf16_runs):
    from helpers_train import state

    _, run_dir = ds_run
    assert state(run_dir)["deterministic"] is True
    assert "deterministic algorithms on" in (run_dir / "train.log").read_text()
    assert state(bf16_runs[1])["deterministic"] is False  # the default
    assert "deterministic algorithms on" not in (bf16_runs[1] / "train.log").read_text()


def test_set_deterministic_turns_torch_deterministic_algorithms_on(monkeypatch):
    import torch

    from training.runtime import set_deterministic

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        assert set_deterministic(False) is None and not torch.are_deterministic_algorithms_enabled()
        note = set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # cuBLAS's own condition for repeatable results
        assert "slower" in note
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


# --- compile with DeepSpeed ---------------------------------------------------------------


def _compile_in_engine(rank: int, port: int, out: str) -> None:
    """The trainer's compiled forward under ZeRO-2: two steps, then what was compiled."""
    os.environ.update(DS_ACCELERATOR="cpu", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import deepspeed as ds
    import torch
    import torch._dynamo

    from models.model import MiniMindLM, ModelConfig
    from training.loop import compiled

    torch.set_num_threads(1)
    model = MiniMindLM(ModelConfig(**TINY))
    engine, *_ = ds.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), config={
        "train_micro_batch_size_per_gpu": 4, "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": 2}, "steps_per_print": 10**9})
    counts = torch._dynamo.utils.counters
    counts.clear()
    forward = compiled(engine, "eager", deepspeed=True)
    batch = torch.randint(1, 300, (4, 24), generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        engine.backward(forward(batch).logits.float().logsumexp(-1).mean())
        engine.step()
    torch.save({"engine_is_forward": forward is engine, "module_compiled": model._compiled_call_impl is not None,
                "frames": int(counts["stats"]["unique_graphs"]),
                "breaks": sum(counts["graph_break"].values())}, f"{out}/compiled.pt")


def test_compile_under_deepspeed_compiles_the_module_inside_the_engine(tmp_path):
    import torch
    import torch.multiprocessing as mp

    mp.spawn(_compile_in_engine, args=(_free_port(), str(tmp_path)), nprocs=1, join=True)
    seen = torch.load(tmp_path / "compiled.pt", weights_only=True)
    assert seen["engine_is_forward"] and seen["module_compiled"]
    assert seen["frames"] == 1 and seen["breaks"] == 0, seen  # one graph of the model, none of the engine's hooks


def test_a_users_deepspeed_json_gets_fp32_accumulation_and_cannot_ask_for_bf16(tmp_path):
    from minimind.config import from_dict
    from minimind.errors import MinimindError
    from training.runtime import deepspeed_config, user_deepspeed_json

    def cfg_with(spec):
        return from_dict({"version": "0.1.0", "base": None, "model_module": "model_0_1_0", "model": TINY,
                          "launch": {"deepspeed": spec, "mixed_precision": "bf16"}})

    (tmp_path / "plain.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    cfg = cfg_with("plain.json")
    assert deepspeed_config(cfg, 10**6, user_deepspeed_json(cfg, tmp_path))["data_types"]["grad_accum_dtype"] == "fp32"
    (tmp_path / "bf16acc.json").write_text(json.dumps({"zero_optimization": {"stage": 2},
                                                       "data_types": {"grad_accum_dtype": "bf16"}}))
    with pytest.raises(MinimindError, match="grad_accum_dtype = 'bf16'.*fp32"):
        user_deepspeed_json(cfg_with("bf16acc.json"), tmp_path)
