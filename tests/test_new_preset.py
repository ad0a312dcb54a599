"""A preset added to models/model.py works everywhere at once: the model module owns its
presets (models/registry.py), so `new` estimates it, the offline plan and analysis write the
memory prose for it and the rules propose the memory steps for it when it has a bank."""

from __future__ import annotations

import json

import pytest
import yaml

from lab_helpers import invoke, make_lab

# "wide": the hybrid layout under a name no module of this repository knows.
WIDE = '\nPRESETS = {\n    "wide": BlockSpec(feed_forward=True, memory=True),\n'
NEW = ["--goal", "try the wide blocks", "--hypothesis", "FFN and memory side by side lower inference loss"]


@pytest.fixture
def lab(tmp_path, bundled):
    lab = make_lab(tmp_path / "lab", bundled)
    path = lab.models_dir / "model.py"
    source = path.read_text(encoding="utf-8")
    assert source.count("\nPRESETS = {\n") == 1
    path.write_text(source.replace("\nPRESETS = {\n", WIDE), encoding="utf-8")
    return lab


def test_new_estimates_and_plans_a_new_preset_with_a_bank(lab):
    from lifecycle.knowledge import estimate

    result = invoke(lab, "new", "0.1.0", *NEW, "--set", "preset=wide", "--no-launch")
    assert result.exit_code == 0, result.output
    est = json.loads((lab.run_dir("0.1.0") / "plan.json").read_text())["estimate"]
    cfg = yaml.safe_load((lab.run_dir("0.1.0") / "config.yaml").read_text())
    assert cfg["model"]["preset"] == "wide"
    # the same blocks as hybrid: the same parameters, bank and FLOPs
    hybrid = estimate.estimate(lab, {**cfg, "model": {**cfg["model"], "preset": "hybrid"}})
    assert est["params"] == hybrid["params"] and est["params"]["memory"] > 0
    assert est["bank_bytes"] == hybrid["bank_bytes"] > 0 and est["flops_per_token"] == hybrid["flops_per_token"]
    # the offline plan says what the preflight found about the memory query, as for any memory preset
    assert "the memory layer reads the bank with the attention output" in lab.record_path("0.1.0").read_text()


def test_the_offline_analysis_and_the_proposals_know_a_new_preset_with_a_bank(lab):
    from agent.base import AnalysisContext
    from agent.offline import OfflineAgent
    from lifecycle.knowledge import proposal
    from models.registry import memory_presets

    assert invoke(lab, "new", "0.1.0", *NEW, "--set", "preset=wide", "--no-launch").exit_code == 0
    cfg = yaml.safe_load((lab.run_dir("0.1.0") / "config.yaml").read_text())
    presets = memory_presets(lab.models_dir)
    assert "wide" in presets and "original" not in presets

    ev = {"inference_loss": 3.0, "val_loss": 3.1, "guardrails": {"memory_entropy": {"value": 0.1, "level": "danger"}},
          "recall": {"held_out": {"p_at_1": 0.1}, "mem_only": {"p_at_1": 0.4}}}

    def analysed(known: tuple[str, ...]):
        ctx = AnalysisContext(version="0.1.0", base=None, goal="g", hypothesis="h", expect=None, state="finished",
                              stop_reason=None, config_changes=[], metrics_summary={"steps": 12}, eval=ev,
                              base_eval=None, comparison=[], verdict="inconclusive", verdict_reason="no base",
                              guardrails={}, model_config=cfg["model"], memory_presets=known)
        return OfflineAgent().analyse(ctx)

    with_bank = analysed(presets)
    assert any("query diversity" in step for step in with_bank.next_steps), with_bank.next_steps
    assert "Facts only in the memory bank" in with_bank.deep_analysis
    without = analysed(tuple(p for p in presets if p != "wide"))  # what a name list that missed it said
    assert not any("query diversity" in step for step in without.next_steps)

    made = proposal.build(lab, "0.1.0", cfg, "inconclusive", ["memory_entropy"], [])
    assert made["sets"] and all(s.startswith(("model.num_candidates=", "model.diversity_loss_weight="))
                                for s in made["sets"]), made
    assert made["estimate"]["train_flops"]


def test_the_record_shows_the_memory_rows_of_a_new_preset_with_a_bank(lab):
    """`new` records from the registry whether the model has a bank (plan.json has_memory): the
    record of a `wide` run shows the memory settings and the memory line, as for `memory`."""
    assert invoke(lab, "new", "0.1.0", *NEW, "--set", "preset=wide", "--no-launch").exit_code == 0
    assert json.loads((lab.run_dir("0.1.0") / "plan.json").read_text())["has_memory"] is True
    record = lab.record_path("0.1.0").read_text()
    assert "| `model.knowledge_num` |" in record and "| `model.num_candidates` |" in record
    assert "- **Memory:** " in record
