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
    result = invoke(lab, "new", "0.1.1", *NEW, "--set", "max_steps=200")
    assert result.exit_code == 3 and "× the base 0.1.0" in result.output and "--yes" in result.output
    assert tree(lab.root) == before
    result = invoke(lab, "new", "0.1.1", *NEW, "--set", "max_steps=200", "--no-launch")
    assert result.exit_code == 0, result.output
    assert "compute_factor" in lab.record_path("0.1.1").read_text()


def test_the_estimate_counts_the_models_real_parameters():
    from lifecycle.estimate import bank_bytes, count_params
    from models.model import MiniMindLM, ModelConfig

    for preset, moe in (("memory", False), ("hybrid", True), ("original", False)):
        cfg = ModelConfig(preset=preset, use_moe=moe, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64,
                          knowledge_num=64, knowledge_length=4, knowledge_dim=16, num_candidates=4)
        model = MiniMindLM(cfg)
        real = sum({id(p): p.numel() for p in model.parameters()}.values())
        assert count_params(cfg.to_dict())["total"] == real
        if cfg.has_memory:
            assert bank_bytes(cfg.to_dict()) == model.memory_bank.numel() * model.memory_bank.element_size() + 64
