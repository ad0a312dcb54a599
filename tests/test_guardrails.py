"""The guardrail rules of PRODUCT.md section 6, as pure functions."""

from __future__ import annotations

import math

import pytest

from minimind import guardrails as g
from minimind.settings import GuardrailRule, GuardrailsConfig


LOW_BAD = GuardrailRule(safe=0.5, danger=0.1, action="stop")   # train loss
HIGH_BAD = GuardrailRule(safe=5.0, danger=10.0, action="flag")  # train/inference ratio


@pytest.mark.parametrize("value, expected", [(2.0, "safe"), (0.51, "safe"), (0.5, "watch"), (0.3, "watch"),
                                             (0.1, "watch"), (0.099, "danger"), (0.006, "danger")])
def test_level_low_values_are_bad(value, expected):
    assert g.level(value, LOW_BAD) == expected


@pytest.mark.parametrize("value, expected", [(1.0, "safe"), (4.99, "safe"), (5.0, "watch"), (7.0, "watch"),
                                             (10.0, "watch"), (10.01, "danger"), (4890.0, "danger")])
def test_level_high_values_are_bad(value, expected):
    assert g.level(value, HIGH_BAD) == expected


@pytest.mark.parametrize("value", [None, float("nan"), float("inf"), "x", True])
def test_level_without_a_finite_value_is_unavailable(value):
    assert g.level(value, LOW_BAD) == "n/a"


def test_smoothed_train_loss_is_the_mean_of_the_last_window():
    assert g.smoothed_train_loss([10.0, 1.0, 2.0, 3.0], window=3) == pytest.approx(2.0)
    assert g.smoothed_train_loss([4.0], window=50) == 4.0
    assert g.smoothed_train_loss([1.0, float("nan"), 3.0], window=5) == pytest.approx(2.0)
    assert g.smoothed_train_loss([], window=5) is None


def test_check_train_smooths_losses_and_reads_selection_entropy():
    cfg = GuardrailsConfig(smoothing_window=2)
    rows = [{"step": 1, "loss_ce": 3.0, "memory/selection_entropy": 3.5, "memory/candidate_entropy": 3.46},
            {"step": 1, "eval/val_loss": 9.0},              # eval rows are not train losses
            {"step": 2, "loss_ce": 0.08, "memory/selection_entropy": 2.5, "memory/candidate_entropy": 3.45},
            {"step": 3, "loss_ce": 0.04, "memory/selection_entropy": 1.5, "memory/candidate_entropy": 3.44}]
    out = g.check_train(rows, cfg)
    assert out["train_loss"]["value"] == pytest.approx(0.06)
    assert out["train_loss"]["level"] == "danger" and out["train_loss"]["action"] == "stop"
    # the guardrail judges the selection; the candidate entropy (near ln 32, "safe"-looking) rides along
    assert out["memory_entropy"] == {**out["memory_entropy"], "value": 1.5, "level": "danger", "action": "flag",
                                     "measure": "selection_entropy", "candidate_entropy": 3.44}
    assert g.levels_only(out)["memory_entropy"] == {"value": 1.5, "level": "danger", "measure": "selection_entropy",
                                                    "candidate_entropy": 3.44}
    assert g.should_stop(out) == "train_loss 0.06 < 0.1 (danger)"


def test_check_train_never_judges_the_candidate_entropy_of_older_rows():
    # metrics.jsonl from model files before selection diversity: only memory/entropy (the candidates')
    out = g.check_train([{"step": 1, "loss_ce": 3.0, "memory/entropy": 3.45}], GuardrailsConfig())
    assert out["memory_entropy"]["level"] == "n/a" and out["memory_entropy"]["value"] is None
    assert out["memory_entropy"]["candidate_entropy"] == 3.45


def test_upgrade_reads_older_results_and_eval_files_as_candidate_entropy():
    old_ev = {"memory_entropy": 3.45, "memory_coverage": 0.021, "memory": {"entropy": 3.45, "l1/entropy": 3.44},
              "guardrails": {"memory_entropy": {"value": 3.45, "level": "safe"},
                             "train_loss": {"value": 4.0, "level": "safe"}}}
    ev = g.upgrade_eval(old_ev)
    assert ev["memory_entropy"] is None and ev["memory_candidate_entropy"] == 3.45
    assert ev["memory"] == {"candidate_entropy": 3.45, "l1/candidate_entropy": 3.44}
    assert ev["guardrails"]["memory_entropy"] == {"value": None, "level": "n/a", "candidate_entropy": 3.45}
    assert ev["guardrails"]["train_loss"] == {"value": 4.0, "level": "safe"}
    assert old_ev["memory_entropy"] == 3.45  # the file's own dict is not changed
    current = {"memory_entropy": 1.1, "memory_candidate_entropy": 3.45, "memory_selection_distinct": 0.05,
               "guardrails": {"memory_entropy": {"value": 1.1, "level": "danger", "measure": "selection_entropy"}}}
    assert g.upgrade_eval(current) == current
    dense = {"memory_entropy": None, "memory_coverage": None, "guardrails": {"memory_entropy": {"value": None, "level": "n/a"}}}
    assert g.upgrade_eval(dense)["guardrails"] == dense["guardrails"] and g.upgrade_eval(None) is None


def test_check_train_without_memory_marks_entropy_unavailable():
    out = g.check_train([{"step": 1, "loss_ce": 4.0}], GuardrailsConfig())
    assert out["memory_entropy"]["level"] == "n/a" and out["memory_entropy"]["value"] is None
    assert out["train_loss"]["level"] == "safe"
    assert g.should_stop(out) is None


def test_check_eval_ratio_and_repetition():
    out = g.check_eval({"train_inference_ratio": 4890.0, "repetition_rate": 0.6}, GuardrailsConfig())
    assert out["train_inference_ratio"]["level"] == "danger"
    assert out["repetition_rate"]["level"] == "watch"
    assert g.should_stop(out) is None  # default action on these is flag, not stop


def test_should_stop_needs_danger_and_stop_action():
    cfg = GuardrailsConfig(repetition_rate=GuardrailRule(safe=0.5, danger=0.8, action="stop"))
    assert g.should_stop(g.check_eval({"repetition_rate": 0.79}, cfg)) is None
    assert g.should_stop(g.check_eval({"repetition_rate": 0.9}, cfg)) == "repetition_rate 0.9 > 0.8 (danger)"
    none_action = GuardrailsConfig(train_loss=GuardrailRule(safe=0.5, danger=0.1, action="none"))
    assert g.should_stop(g.check_train([{"step": 1, "loss_ce": 0.01}], none_action)) is None


def test_level_changes_reports_only_changes():
    cfg = GuardrailsConfig()
    first = g.check_train([{"step": 1, "loss_ce": 3.0}], cfg)
    assert set(g.level_changes({}, first)) == {"train_loss", "memory_entropy"}
    same = g.check_train([{"step": 1, "loss_ce": 2.0}], cfg)
    assert g.level_changes(first, same) == {}
    lower = g.check_train([{"step": 1, "loss_ce": 0.3}], cfg)
    assert g.level_changes(first, lower) == {"train_loss": {"from": "safe", "to": "watch", "value": 0.3}}


def test_evaluate_all_four_and_compact_form():
    out = g.levels_only(g.evaluate({"train_loss": 1.0, "train_inference_ratio": 2.0, "repetition_rate": 0.9,
                                    "memory_entropy": None}, GuardrailsConfig()))
    assert out == {"train_loss": {"value": 1.0, "level": "safe"},
                   "train_inference_ratio": {"value": 2.0, "level": "safe"},
                   "repetition_rate": {"value": 0.9, "level": "danger"},
                   "memory_entropy": {"value": None, "level": "n/a"}}
    assert all(v["value"] is None or math.isfinite(v["value"]) for v in out.values())


def test_guardrails_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, minimind.guardrails; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__('pathlib').Path(__file__).parent.parent))


def test_every_guardrail_names_where_its_value_comes_from():
    assert set(g.SOURCES) == set(g.NAMES)
    for name, entries in g.SOURCES.items():
        kinds = [entry.partition(":")[0] for entry in entries]
        assert kinds and set(kinds) <= {"train", "eval"} and len(kinds) == len(set(kinds)), name
    assert g.EVAL_GUARDRAILS == ("train_inference_ratio", "repetition_rate")  # no train source: an evaluation measures them
    assert g.source("train_loss", "train") == "loss_ce" and g.source("repetition_rate", "train") is None


def test_a_guardrail_without_an_eval_source_is_unavailable_in_a_final_evaluation(monkeypatch):
    """A new rule measured only from the log rows has no eval.json key: n/a, not a KeyError."""
    monkeypatch.setattr(g, "NAMES", (*g.NAMES, "grad_norm"))
    monkeypatch.setitem(g.SOURCES, "grad_norm", ("train:grad_norm",))
    cfg = GuardrailsConfig()
    cfg.grad_norm = GuardrailRule(safe=1.0, danger=10.0, action="flag")
    ev = {"train_loss": 3.0, "train_inference_ratio": 1.1, "repetition_rate": 0.2, "memory_entropy": 3.5}
    out = g.check_final(ev, cfg)
    assert list(out) == [*g.NAMES]
    assert out["grad_norm"]["level"] == "n/a" and out["grad_norm"]["value"] is None
    assert {name: out[name]["level"] for name in ev} == {name: "safe" for name in ev}
    assert g.check_train([{"step": 1, "loss_ce": 3.0, "grad_norm": 20.0}], cfg)["grad_norm"]["level"] == "danger"
