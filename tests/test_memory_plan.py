"""Memory planning: the estimate of a config's device memory (one owner, minimind.memory_plan)
and the trainer splitting a micro-batch that does not fit its budget into more accumulation
steps with the same effective batch, said in train.log and state.json."""

from __future__ import annotations

import helpers_train as h
from minimind.memory_plan import MEMORY_HEADROOM, plan_micro_batch, train_memory

MODEL = {"n_params": 1_000_000, "bank_bytes": 0, "dim": 64, "n_layers": 2, "vocab_size": 1000, "precision": "no"}


def test_train_memory_parts_and_precision():
    fp32 = train_memory(batch_tokens=1000, **MODEL)
    bf16 = train_memory(batch_tokens=1000, **{**MODEL, "precision": "bf16"})
    assert fp32["parameters_and_optimizer"] == 16_000_000
    assert fp32["activations"] == 4 * 24 * 64 * 2 * 1000 and bf16["activations"] * 2 == fp32["activations"]
    assert fp32["logits"] == 4 * 2 * 1000 * 1000
    assert fp32["total"] == sum(v for k, v in fp32.items() if k != "total")


def test_a_micro_batch_too_big_is_split_keeping_the_effective_batch():
    seq = 128
    per_seq = train_memory(batch_tokens=seq, **MODEL)["total"] - train_memory(batch_tokens=0, **MODEL)["total"]
    fixed = train_memory(batch_tokens=0, **MODEL)["total"]
    budget = int((fixed + 10 * per_seq) / MEMORY_HEADROOM)  # room for 10 sequences: 32 -> 8 (divides 32)
    plan = plan_micro_batch(32, 2, seq, budget, **MODEL)
    assert (plan.batch_size, plan.accumulation_steps) == (8, 8) and plan.split and plan.fits
    assert plan.batch_size * plan.accumulation_steps == 32 * 2
    assert "split into micro-batch 8 x accumulation 8" in plan.note()
    roomy = plan_micro_batch(32, 2, seq, 10 ** 12, **MODEL)
    assert not roomy.split and (roomy.batch_size, roomy.accumulation_steps) == (32, 2)
    assert not plan_micro_batch(32, 2, seq, None, **MODEL).split        # a CPU run: not planned
    hopeless = plan_micro_batch(32, 2, seq, fixed, **MODEL)
    assert not hopeless.fits and hopeless.batch_size == 1 and hopeless.accumulation_steps == 64


def test_the_trainer_splits_to_a_small_budget_and_says_so(tmp_path_factory):
    data = h.shared_data(tmp_path_factory)
    lab = h.make_lab(tmp_path_factory.mktemp("plan") / "lab", data)
    # tiny model: ~3.5 MB fixed + ~5.5 MB per sequence of 96 tokens in fp32; 0.03 GiB fits 4 of the 8
    run_dir = h.write_config(lab, train={"max_steps": 4, "eval_interval": 0, "save_interval": 4},
                             launch={"memory_budget_gb": 0.03})
    assert h.run_train(run_dir) == 0, h.tail(run_dir / "train.log")
    log = (run_dir / "train.log").read_text()
    assert "micro-batch 8 x accumulation 1 would not fit" in log
    assert "split into micro-batch 4 x accumulation 2 (same effective batch)" in log
    plan = h.state(run_dir)["memory_plan"]
    assert (plan["batch_size"], plan["accumulation_steps"], plan["split"]) == (4, 2, True)
    assert plan["batch_size"] * plan["accumulation_steps"] == plan["configured_batch_size"] == 8
    assert "split by the memory plan" in h.state(run_dir)["resources"]
    assert [r["step"] for r in h.train_rows(run_dir)] == [2, 4]  # the same optimizer steps as configured
