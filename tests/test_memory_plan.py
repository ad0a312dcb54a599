"""Memory planning: the estimate of a config's device memory (one owner, minimind.memory_plan)
and the trainer splitting a micro-batch that does not fit its budget into more accumulation
steps with the same effective batch, said in train.log and state.json."""

from __future__ import annotations

import pytest
import torch

import helpers_train as h
from lifecycle.knowledge.estimate import count_params
from minimind import memory_plan
from minimind.memory_plan import (MEMORY_HEADROOM, head_bytes_per_token, layer_bytes_per_token, memory_state_bytes,
                                  plan_micro_batch, train_memory)
from models.model import EMA_MAX_PENDING, PRESETS, MiniMindLM, ModelConfig

MODEL = ModelConfig(preset="memory", dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=1000, max_seq_len=128,
                    knowledge_num=1024, knowledge_length=8, knowledge_dim=32, num_candidates=8).to_dict()
SPEC = PRESETS["memory"]
PARAMS = 1_000_000
RTX_4090_BYTES = 24564 * 2 ** 20  # torch.cuda.get_device_properties(...).total_memory of a 24 GB RTX 4090


def test_train_memory_parts_and_precision():
    fp32 = train_memory(MODEL, SPEC, PARAMS, 1000)
    bf16 = train_memory(MODEL, SPEC, PARAMS, 1000, "bf16")
    assert fp32["parameters_and_optimizer"] == bf16["parameters_and_optimizer"] == 16_000_000
    assert fp32["autocast_weight_copies"] == 0 and bf16["autocast_weight_copies"] == 2 * PARAMS
    per_token = 2 * layer_bytes_per_token(MODEL, SPEC, "no") + head_bytes_per_token(MODEL, "no")
    assert fp32["activations"] == 1000 * per_token and bf16["activations"] < fp32["activations"]
    # the largest tensor beside the kept ones: the logits in their own dtype (4 and 2 bytes)
    assert fp32["transient"] == 4 * 1000 * 1000 and bf16["transient"] == 2 * 1000 * 1000
    assert fp32["bank"] == 1024 * (8 * 2 + 1)
    assert fp32["loss_workspace"] == bf16["loss_workspace"] == 4 * 4 * 1000 * 1000  # four fp32 copies of a chunk
    assert train_memory(MODEL, SPEC, PARAMS, 10 ** 6, "bf16")["loss_workspace"] == 4 * 4 * 2 ** 24  # a chunk at most
    assert fp32["total"] == sum(v for k, v in fp32.items() if k != "total")


def test_the_ema_stores_and_usage_counts_are_counted_as_the_model_holds_them():
    from training.measures import CE_CHUNK_ELEMENTS

    assert memory_plan.EMA_MAX_PENDING == EMA_MAX_PENDING
    assert memory_plan.LOSS_CHUNK_ELEMENTS == CE_CHUNK_ELEMENTS
    model = MiniMindLM(ModelConfig(**MODEL))
    held = sum(t.numel() * t.element_size() for _, layer in model.memory_layers()
               for t in (layer.ema.ids, layer.ema.sums, layer.ema.counts, layer.usage))
    assert memory_state_bytes(MODEL, SPEC) == held
    # MiniMind2 size: 32,769 slots x dim fp32 per memory layer, 0.54 GB over 8 layers
    big = ModelConfig(preset="memory").to_dict()
    assert memory_state_bytes(big, SPEC) == 8 * ((32768 + 1) * (4 * 512 + 16) + 4 * 1_048_576)
    assert memory_state_bytes({**big, "preset": "original"}, PRESETS["original"]) == 0


def test_a_micro_batch_too_big_is_split_keeping_the_effective_batch():
    seq = MODEL["max_seq_len"]
    fixed = train_memory(MODEL, SPEC, PARAMS, 0)["total"]
    per_seq = train_memory(MODEL, SPEC, PARAMS, seq)["total"] - fixed
    budget = int((fixed + 10 * per_seq) / MEMORY_HEADROOM)  # room for 10 sequences: 32 -> 8 (divides 32)
    plan = plan_micro_batch(32, 2, budget, MODEL, SPEC, PARAMS)
    assert (plan.batch_size, plan.accumulation_steps) == (8, 8) and plan.split and plan.fits
    assert plan.batch_size * plan.accumulation_steps == 32 * 2
    assert "split into micro-batch 8 x accumulation 8" in plan.note()
    roomy = plan_micro_batch(32, 2, 10 ** 12, MODEL, SPEC, PARAMS)
    assert not roomy.split and (roomy.batch_size, roomy.accumulation_steps) == (32, 2)
    assert not plan_micro_batch(32, 2, None, MODEL, SPEC, PARAMS).split        # a CPU run: not planned
    hopeless = plan_micro_batch(32, 2, fixed, MODEL, SPEC, PARAMS)
    assert not hopeless.fits and hopeless.batch_size == 1 and hopeless.accumulation_steps == 64


def test_the_lab_recipe_on_a_24_gb_card():
    """Memory preset at MiniMind2 size, 128 x 512, accumulation 8, bf16, on an RTX 4090.

    main 05bce92 planned 13.8 GiB from 24 values of dim per token per layer, while the
    measured saved tensors were 35.4 KiB per token per layer and the logits fp32: 19.6 GiB
    kept for backward alone, about 22 GiB at the peak, past the 21.6 GiB the headroom
    allows. With what the memory layer keeps cut and the logits bf16, the measured counts
    (tests/test_saved_memory.py) give 14.1 GiB: 128 x 512 fits, and the plan keeps it.
    On an H200, through the trainer's path, the step's peak was 14.16 GiB (22.54 before)."""
    m = ModelConfig(preset="memory", max_seq_len=512).to_dict()
    params = count_params(m, SPEC)["total"]  # 11.8 M
    parts = train_memory(m, SPEC, params, 128 * 512, "bf16")
    gib = 2 ** 30
    assert parts["activations"] / gib == pytest.approx(12.30, abs=0.01)
    assert parts["memory_state"] / gib == pytest.approx(0.53, abs=0.01)
    assert parts["transient"] / gib == pytest.approx(0.78, abs=0.01)
    plan = plan_micro_batch(128, 8, RTX_4090_BYTES, m, SPEC, params, "bf16")
    assert plan.fits and not plan.split and (plan.batch_size, plan.accumulation_steps) == (128, 8)
    assert plan.needed_bytes <= MEMORY_HEADROOM * RTX_4090_BYTES
    assert plan.note() == (f"memory plan: micro-batch 128 x accumulation 8, about {plan.needed_bytes / gib:.2f} GiB "
                           "of the 23.99 GiB budget")
    # a 12 GiB card does not take it: the plan halves the micro-batch and doubles the accumulation
    small = plan_micro_batch(128, 8, 12 * 2 ** 30, m, SPEC, params, "bf16")
    assert (small.batch_size, small.accumulation_steps) == (64, 16) and small.fits


def test_the_trainer_splits_to_a_small_budget_and_says_so(tmp_path_factory):
    data = h.shared_data(tmp_path_factory)
    lab = h.make_lab(tmp_path_factory.mktemp("plan") / "lab", data)
    # tiny model: ~3.5 MB fixed + ~15 MB per sequence of 96 tokens in fp32 (two thirds of it the
    # loss's fp32 work on 6,400-token logits); 0.08 GiB fits 4 of the 8
    run_dir = h.write_config(lab, train={"max_steps": 4, "eval_interval": 0, "save_interval": 4},
                             launch={"memory_budget_gb": 0.08})
    assert h.run_train(run_dir) == 0, h.tail(run_dir / "train.log")
    log = (run_dir / "train.log").read_text()
    assert "micro-batch 8 x accumulation 1 would not fit" in log
    assert "split into micro-batch 4 x accumulation 2 (same effective batch)" in log
    plan = h.state(run_dir)["memory_plan"]
    assert (plan["batch_size"], plan["accumulation_steps"], plan["split"]) == (4, 2, True)
    assert plan["batch_size"] * plan["accumulation_steps"] == plan["configured_batch_size"] == 8
    assert "split by the memory plan" in h.state(run_dir)["resources"]
    assert [r["step"] for r in h.train_rows(run_dir)] == [2, 4]  # the same optimizer steps as configured
