"""The verdict as pure rules (minimind/verdict.py): criteria, comparison rows and result
lines, paired intervals on per-item data, the bank reading against its shuffled control,
and run-to-run noise that is never called a change."""

from __future__ import annotations

from minimind.verdict import (bank_reading, compare_rows, decide, held_out_control, implied_criteria, parse_criteria,
                              result_lines)
from verdict_data import BASE, NOISY, measured, retrieved, shifted


def test_explicit_criteria_decide():
    assert parse_criteria("inference_loss < base and recall.mem_only.p_at_1 > 0.2")[1].target == 0.2
    new = shifted(-0.3, recall={"mem_only": [1.0] * 30 + [0.0] * 14})
    verdict, reason = decide("h", "inference_loss < base and recall.mem_only.p_at_1 > 0.2", new, BASE)
    assert verdict == "supported" and "expected result" in reason and "95% CI" in reason
    verdict, reason = decide("h", "inference_loss < base", shifted(+0.3), BASE)
    assert verdict == "refuted" and "missed" in reason
    # a change of the same size, but only on some documents: the paired interval spans zero
    mixed = measured([v + d for v, d in zip(NOISY, [0.4, -0.4, 0.3, -0.35, 0.4, -0.4, 0.3, -0.2])])
    verdict, reason = decide("h", "inference_loss < base", mixed, BASE)
    assert verdict == "inconclusive" and "within noise" in reason


def test_no_per_item_data_is_never_a_change():
    old_base = {"inference_loss": 4.2, "val_loss": 4.0}
    verdict, reason = decide("lower inference loss", None, shifted(-1.0), old_base)
    assert verdict == "inconclusive" and "no paired interval" in reason
    rows = {r["metric"]: r for r in compare_rows(shifted(-1.0), old_base)}
    assert rows["inference_loss"]["mark"] is None and rows["inference_loss"]["better"] is None
    assert "no interval" in rows["inference_loss"]["delta_text"]


def test_implied_and_default_criteria():
    assert [c.metric for c in implied_criteria("freezing lowers the inference loss")] == ["inference_loss"]
    assert implied_criteria("召回率 提高")[0].op == ">"
    base = measured(NOISY, recall={"both": [0.0, 0.0, 0.0, 1.0] * 10})
    new = measured(NOISY, recall={"both": [1.0, 1.0, 1.0, 0.0] * 10})
    verdict, reason = decide("memory improves recall", None, new, base)
    assert verdict == "supported"
    verdict, reason = decide("something vague", None, shifted(-0.5), BASE)
    assert verdict == "supported" and "default" in reason
    assert decide("x", None, shifted(0), None)[0] == "inconclusive"  # nothing to compare with
    assert decide("x", None, None, BASE)[0] == "inconclusive"


def test_danger_guardrail_blocks_supported():
    verdict, reason = decide("lower inference loss", None, shifted(-1.0), BASE, {"repetition_rate": "danger"})
    assert verdict == "inconclusive" and "repetition_rate" in reason


def test_compare_rows_and_result_lines():
    new = shifted(-0.5, val=[v + 0.3 for v in NOISY], recall={"mem_only": [0.0] * 40 + [1.0] * 4,
                                                             "held_out": [1.0, 1.0] * 20})
    rows = {r["metric"]: r for r in compare_rows(new, BASE)}
    assert rows["inference_loss"]["better"] is True and "✅" in rows["inference_loss"]["delta_text"]
    assert rows["val_loss"]["better"] is False and rows["val_loss"]["mark"] == "❌"
    assert rows["recall.mem_only.p_at_1"]["mark"] == "≈"  # unchanged: within noise
    assert rows["repetition_rate"]["mark"] is None       # no per-sample data here
    control = held_out_control(new, BASE)
    assert control["suspicious"] and "suspicious" in control["text"]
    guards = {"train_loss": {"value": 0.05, "level": "danger"}, "memory_entropy": {"value": 2.5, "level": "watch"},
              "repetition_rate": {"value": 0.1, "level": "safe"}}
    lines = result_lines(list(rows.values()), guards, "refuted", "r", control=control)
    assert lines[0].startswith("❌ hypothesis refuted")
    assert any(l.startswith("❌ guardrail train_loss") for l in lines)
    assert any(l.startswith("🟡 guardrail memory_entropy") for l in lines)  # watch is never ✅
    assert any(l.startswith("✅ guardrail repetition_rate") for l in lines)
    assert any(l.startswith("✅ inference_loss") and "95% CI" in l for l in lines)
    assert any(l.startswith("≈ recall.mem_only.p_at_1") for l in lines)
    assert any(l.startswith("⚠️ held_out P@1") for l in lines)
    assert result_lines([], {}, "inconclusive", "r")[0].startswith("≈ hypothesis inconclusive")


def test_held_out_noise_is_not_flagged():
    new = measured(NOISY, recall={"held_out": [1.0, 0.0] * 20})  # same count, other probes hit
    control = held_out_control(new, BASE)
    assert not control["suspicious"] and "noise" in control["text"]


def test_bank_reading_against_the_shuffled_control_and_retrieval_rows():
    used = bank_reading(retrieved([1.0] * 20 + [0.0] * 20, [0.0] * 38 + [1.0] * 2))
    assert used["above_chance"] and used["splits"]["mem_only"]["ci"]["low"] > 0
    assert "0.5 of the time, a random other fact's 0.05" in used["text"] and used["text"].endswith("above chance")
    chance = bank_reading(retrieved([0.0] * 36 + [1.0] * 4, [0.0] * 37 + [1.0] * 3))
    assert not chance["above_chance"] and chance["text"].endswith("at chance")
    assert "与随机无异" in bank_reading(retrieved([0.0] * 36 + [1.0] * 4, [0.0] * 37 + [1.0] * 3), lang="zh")["text"]
    assert bank_reading(BASE) is None  # no memory, no diagnostics
    # hit@C is a metric of the comparison (paired over the same probes), and a criterion --expect can name
    rows = {r["metric"]: r for r in compare_rows(retrieved([1.0] * 20 + [0.0] * 20, [0.0] * 40),
                                                 retrieved([0.0] * 38 + [1.0] * 2, [0.0] * 40))}
    assert rows["retrieval.mem_only.hit_at_c"]["mark"] == "✅" and "retrieval.both.hit_at_c" not in rows
    assert "retrieval.mem_only.hit_at_c" not in {r["metric"] for r in compare_rows(BASE, BASE)}
    assert parse_criteria("retrieval.mem_only.hit@C > 0.3")[0].metric == "retrieval.mem_only.hit_at_c"
    lines = result_lines([], {}, "supported", "r", reading=used)
    assert lines[-1].startswith("✅ bank reads: mem_only: the fact's own entry")


def test_a_consistent_but_tiny_change_is_run_to_run_noise():
    # every document 0.4% better: the paired interval excludes zero, but another seed moves this much
    new = measured([v * 0.996 for v in NOISY])
    rows = {r["metric"]: r for r in compare_rows(new, BASE)}
    ci = rows["inference_loss"]["ci"]
    assert ci["high"] < 0 and rows["inference_loss"]["mark"] == "≈"
    verdict, reason = decide("lower inference loss", None, new, BASE)
    assert verdict == "inconclusive" and "run-to-run floor of 1%" in reason
    assert decide("lower inference loss", None, new, BASE, min_effect=0.0)[0] == "supported"
