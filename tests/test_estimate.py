"""The compute estimate before a launch: printed and recorded, impossible configs refused, big jumps gated."""

from __future__ import annotations

import json

import pytest

from lab_helpers import invoke, make_lab, tree

HOSTILE = ["dim=8192", "n_layers=128", "knowledge_num=67108864", "knowledge_length=1024", "vocab_size=1000000",
           "epochs=1000"]
NEW = ["--goal", "scale up", "--hypothesis", "a much larger model lowers inference loss"]


@pytest.fixture
def lab(tmp_path, bundled):
    return make_lab(tmp_path / "lab", bundled)


def _sets(items):
    return [a for item in items for a in ("--set", item)]


def test_the_hostile_plan_is_refused_with_the_estimate(lab):
    before = tree(lab.root)
    result = invoke(lab, "new", "0.1.0", *NEW, *_sets(HOSTILE + ["preset=memory"]))
    assert result.exit_code == 3, result.output
    line = result.output.strip()
    assert "vocab_size is 1,000,000 but the tokenizer" in line and "6,400" in line
    assert "memory bank needs" in line and "parameters:" in line and "training FLOPs" in line
    assert tree(lab.root) == before


def test_a_vocab_size_that_disagrees_with_the_tokenizer_is_refused(lab):
    before = tree(lab.root)
    result = invoke(lab, "new", "0.1.0", *NEW, "--set", "vocab_size=6000", "--no-launch")
    assert result.exit_code == 3 and "vocab_size is 6,000 but the tokenizer" in result.output
    assert tree(lab.root) == before


def test_new_records_the_estimate_and_gates_a_compute_jump(lab):
    result = invoke(lab, "new", "0.1.0", *NEW, "--no-launch")
    assert result.exit_code == 0 and "FLOPs/token" in result.output and "uncalibrated" in result.output
    est = json.loads((lab.run_dir("0.1.0") / "plan.json").read_text())["estimate"]
    assert est["params"]["total"] > 0 and est["train_flops"] == 3 * est["flops_per_token"] * est["train_tokens"]
    before = tree(lab.root)
    result = invoke(lab, "new", "0.1.1", *NEW, "--set", "max_steps=200", "--base", "0.1.0")  # a draft is no default base
    assert result.exit_code == 3 and "× the base 0.1.0" in result.output and "--yes" in result.output
    assert tree(lab.root) == before
    result = invoke(lab, "new", "0.1.1", *NEW, "--set", "max_steps=200", "--base", "0.1.0", "--no-launch")
    assert result.exit_code == 0, result.output
    assert "compute_factor" in lab.record_path("0.1.1").read_text()


def test_the_estimate_counts_the_models_real_parameters():
    from lifecycle.knowledge.estimate import bank_bytes, count_params
    from models.model import PRESETS, MiniMindLM, ModelConfig

    for preset, moe in (("memory", False), ("hybrid", True), ("original", False)):
        cfg = ModelConfig(preset=preset, use_moe=moe, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64,
                          knowledge_num=64, knowledge_length=4, knowledge_dim=16, num_candidates=4)
        model = MiniMindLM(cfg)
        real = sum({id(p): p.numel() for p in model.parameters()}.values())
        assert count_params(cfg.to_dict(), PRESETS[preset])["total"] == real
        if cfg.has_memory:
            assert bank_bytes(cfg.to_dict(), PRESETS[preset]) == model.memory_bank.numel() * model.memory_bank.element_size() + 64


def test_an_sft_estimate_counts_the_conversations_tokens(tmp_path, bundled, monkeypatch):
    """Stage sft trains on the conversation set: the estimate counts its own tokens (prompt and
    assistant, cut at max_seq_len as the collate cuts them), not documents of max_seq_len."""
    import numpy as np
    import yaml

    from corpus.sft import prepare_sft
    from lifecycle.knowledge import estimate
    from training.data import split_documents

    lab = make_lab(tmp_path / "lab", bundled, sft=True)
    assert invoke(lab, "new", "0.1.0", *NEW, "--no-launch").exit_code == 0
    cfg = yaml.safe_load((lab.run_dir("0.1.0") / "config.yaml").read_text())
    cfg["train"]["max_steps"], cfg["train"]["epochs"] = 0, 2
    pretrain = estimate.estimate(lab, cfg)
    sft_cfg = {**cfg, "stage": "sft"}
    before = tree(lab.root)
    est = estimate.estimate(lab, sft_cfg)  # no cache yet: counted in memory, nothing written (new may still refuse)
    assert tree(lab.root) == before and est["tokens_counted_how"]["sampled"] is None
    with monkeypatch.context() as patch:
        patch.setattr(estimate, "SFT_SAMPLE_BYTES", lab.resolve(cfg["data"]["sft"]).stat().st_size // 3)
        sampled = estimate.sft_tokens(lab, sft_cfg)

    cache = prepare_sft(lab.resolve(cfg["data"]["sft"]), lab.resolve(cfg["data"]["tokenizer"]), lab.cache_dir,
                        progress=False)
    train_idx, _ = split_documents(cache.num_docs, cfg["data"]["val_fraction"], cfg["train"]["seed"])
    seq = cfg["model"]["max_seq_len"]
    lengths = np.diff(np.asarray(cache.offsets, dtype=np.int64))[train_idx]
    expected = 2 * int((np.minimum(lengths, seq + 1) - 1).sum())
    assert est["train_tokens"] == expected
    assert est["train_flops"] == 3 * est["flops_per_token"] * expected
    per_step = cfg["train"]["batch_size"] * cfg["train"]["accumulation_steps"]
    assert est["train_tokens"] < est["train_steps"] * per_step * seq  # conversations are shorter than max_seq_len
    assert est["train_tokens"] != pretrain["train_tokens"]
    assert 0 < est["tokens_counted_how"]["target_tokens"] < expected
    line = estimate.summary_lines(est)[1]
    assert f"{len(train_idx):,} training conversations × 2 epoch(s)" in line and "assistant tokens" in line
    assert "训练对话" in estimate.summary_lines(est, "zh")[1]
    # a file larger than the sample is counted from its first part, scaled to its size, and says so
    share = sampled["sampled"]
    assert 0.2 < share < 0.45 and abs(2 * sampled["tokens"] - expected) < 0.3 * expected
    assert "estimated from the first" in estimate.counted_text({**est["tokens_counted_how"], "sampled": share})
    # max_steps stops part-way: that share of the epochs' tokens
    sft_cfg["train"] = {**cfg["train"], "max_steps": max(1, est["train_steps"] // 2)}
    capped = estimate.estimate(lab, sft_cfg)  # now from the prepared cache: the same count
    assert capped["train_tokens"] == int(expected * capped["train_steps"] / est["train_steps"])
    # the gate reads the same count: a base with the same compute passes, a factor below the ratio refuses
    base_cfg = yaml.safe_load((lab.run_dir("0.1.0") / "config.yaml").read_text())
    ratio = est["train_flops"] / estimate.estimate(lab, base_cfg, exclude="0.1.0")["train_flops"]
    assert estimate.gate(lab, {**cfg, "stage": "sft"}, est, "0.1.0", ratio * 1.01, False, True) is None
    with pytest.raises(Exception, match="× the base 0.1.0"):
        estimate.gate(lab, {**cfg, "stage": "sft"}, est, "0.1.0", ratio * 0.5, False, True)


def test_the_estimate_resolves_precision_as_the_trainer_does(lab, monkeypatch):
    """`auto` is bf16 only on a card that computes in bf16 (minimind/devices.py): the estimate
    plans a card without it in fp32, as the trainer will run it."""
    import yaml

    from lifecycle.knowledge import estimate
    from minimind.config import from_dict
    from minimind.devices import DeviceFacts
    from minimind.memory_plan import train_memory
    from training import runtime

    assert invoke(lab, "new", "0.1.0", *NEW, "--no-launch").exit_code == 0
    cfg = yaml.safe_load((lab.run_dir("0.1.0") / "config.yaml").read_text())
    assert cfg["launch"]["mixed_precision"] == "auto" and not cfg["launch"]["memory_budget_gb"]
    batch_tokens = cfg["train"]["batch_size"] * cfg["model"]["max_seq_len"]
    needed = {}
    for bf16 in (True, False):
        card = DeviceFacts(cuda=True, bf16_supported=bf16, memory=80 * 2 ** 30)
        monkeypatch.setattr(estimate, "machine", lambda card=card: card)
        est = estimate.estimate(lab, cfg)
        precision = runtime.run_precision(from_dict(cfg), {"cuda": True, "bf16_supported": bf16})
        assert precision == ("bf16" if bf16 else "no")
        assert est["device"] == "cuda" and est["memory_plan"]["budget_bytes"] == 80 * 2 ** 30
        spec = estimate.block_spec(lab, cfg)
        assert est["device_memory_bytes"] == train_memory(cfg["model"], spec, est["params"]["total"], batch_tokens,
                                                          precision)["total"]
        needed[bf16] = est["device_memory_bytes"]
    assert needed[False] > needed[True]  # fp32 activations (4 bytes) outweigh the bf16 weight copies it saves
