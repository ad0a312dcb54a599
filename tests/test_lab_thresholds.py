"""A lab's own guardrail thresholds reach every text that states them.

The lab here sets `guardrails.train_loss.danger: 0.2` (the default is 0.1). The plan the
offline agent writes (`runs/V/plan.json`), the record (`experiment/experiment_V.md`), the
lessons and rules the plan step is given, and the offline analysis must state 0.2 for the
train-loss guardrail and never the default 0.1. A train loss of 0.15 tells the two apart:
danger under the lab's rule, only watch under the default.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from lab_helpers import TINY_SETTINGS, invoke

from minimind import guardrails as rules
from minimind.config import load_config
from minimind.rundir import (ANALYSIS_FILE, COMMIT_MSG_FILE, CONFIG_FILE, EVAL_FILE, EXIT_GUARDRAIL, METRICS_FILE,
                             PLAN_FILE, read_json, update_state, write_exit_code)

LAB_GUARDRAILS = "guardrails:\n  train_loss:\n    safe: 0.5\n    danger: 0.2\n    action: stop\n"
LAB_RULE = {"safe": 0.5, "danger": 0.2, "action": "stop"}
DANGER_LOSS = 0.15  # danger below 0.2, only watch below the default 0.1
# The default threshold as a number of its own: not 0.15, 0.12 or the version 0.1.0.
DEFAULT_THRESHOLD = re.compile(r"(?<![\d.])0\.10*(?!\.?\d)")
# A threshold stated for the train-loss guardrail, in the forms minimind writes
# ("smoothed train loss below 0.2", "(danger below 0.2)", "train_loss 0.15 < 0.2 (danger)").
TRAIN_LOSS_THRESHOLD = re.compile(
    r"(?:train[ _]loss(?: \(danger| [\d.eE+-]+)?|训练损失(?:[^\n(]{0,30}\(危险线:)?)\s*(?:below|above|<|>|低于|高于)\s*"
    r"(\d+(?:\.\d+)?(?:e-?\d+)?)")
# The same thresholds as the zh record writes them ("平滑训练损失低于 0.2", "(危险线:低于 0.2)").
STATED = {"en": ("smoothed train loss below 0.2", "train loss", "(danger below 0.2)"),
          "zh": ("平滑训练损失低于 0.2", "训练损失", "(危险线:低于 0.2)")}


def make_threshold_lab(root: Path, data_dir: Path):
    """tests/lab_helpers.make_lab with the guardrail section added to the lab's minimind.yaml."""
    from lifecycle.init import init_lab

    lab = init_lab(root, TINY_SETTINGS.format(steps=12) + LAB_GUARDRAILS)
    for name in ("pretrain.jsonl", "knowledge.json", "probes.json", "tokenizer.json"):
        shutil.copyfile(data_dir / name, lab.data_dir / name)
    return lab


@pytest.fixture
def lab(tmp_path, bundled_data):
    return make_threshold_lab(tmp_path / "lab", bundled_data)


def assert_states_only_the_lab_threshold(text: str, where: str, required: bool = True) -> None:
    stated = TRAIN_LOSS_THRESHOLD.findall(text)
    if required:
        assert stated, f"{where} states no train-loss threshold:\n{text}"
    assert all(float(value) == 0.2 for value in stated), f"{where} states train-loss thresholds {stated}:\n{text}"
    assert not DEFAULT_THRESHOLD.findall(text), f"{where} states the default 0.1:\n{text}"


def test_the_patterns_tell_the_thresholds_apart():
    assert TRAIN_LOSS_THRESHOLD.findall("护栏:以下情况停止运行: 平滑训练损失低于 0.2(每个日志步)") == ["0.2"]
    assert TRAIN_LOSS_THRESHOLD.findall("更高的学习率可能使训练损失塌缩(危险线:低于 0.2)或发散") == ["0.2"]
    assert TRAIN_LOSS_THRESHOLD.findall("Guardrails stop the run on smoothed train loss below 0.1 (at every") == ["0.1"]
    assert TRAIN_LOSS_THRESHOLD.findall("a collapsing train loss (danger below 0.2) or") == ["0.2"]
    assert TRAIN_LOSS_THRESHOLD.findall("stopped by a guardrail: train_loss 0.15 < 0.2 (danger).") == ["0.2"]
    assert DEFAULT_THRESHOLD.findall("below 0.1.") and DEFAULT_THRESHOLD.findall("below 0.10 now")
    assert not DEFAULT_THRESHOLD.findall("experiment 0.1.0, loss 0.15, ratio 0.12, lr 0.001, 10.1")


def test_the_lab_settings_carry_the_threshold(lab):
    rule = lab.settings().guardrails.train_loss
    assert (rule.safe, rule.danger, rule.action) == (0.5, 0.2, "stop")
    assert rules.level(DANGER_LOSS, rule) == "danger"
    assert rules.level(DANGER_LOSS, rules.GuardrailsConfig().train_loss) == "watch"  # the default tells them apart


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_plan_and_record_state_the_labs_threshold(lab, monkeypatch, lang):
    from agent.base import lessons_text
    from agent.offline import OfflineAgent

    given = []
    real_plan = OfflineAgent.plan

    def spy(self, ctx):
        given.append(ctx)
        return real_plan(self, ctx)

    monkeypatch.setattr(OfflineAgent, "plan", spy)
    # learning_rate and max_steps are the settings whose risks name the train-loss guardrail
    result = invoke(lab, "new", "0.1.0", "--goal", "Faster learning on the bundled facts",
                    "--hypothesis", "A higher learning rate lowers inference loss", "--lang", lang, "--no-launch",
                    "--set", "preset=memory", "--set", "learning_rate=0.004", "--set", "max_steps=20")
    assert result.exit_code == 0, result.output

    run_dir = lab.run_dir("0.1.0")
    cfg = load_config(run_dir / CONFIG_FILE)
    assert (cfg.guardrails.train_loss.safe, cfg.guardrails.train_loss.danger) == (0.5, 0.2)

    # what the plan step was given: the lab's rules and lessons stating them
    (ctx,) = given
    assert ctx.guardrails["train_loss"] == LAB_RULE
    from lifecycle.knowledge import lessons

    # the lessons come from the lab's experiment/LESSONS.md, the thresholds from its settings
    assert ctx.lessons == lessons_text(ctx.guardrails, lessons.lines(lab, lang))
    assert "h_attn" in ctx.lessons
    assert "smoothed train loss below 0.2" in ctx.lessons
    assert_states_only_the_lab_threshold(ctx.lessons, "the lessons")

    # what the plan says (plan.json) and what the record shows
    plan = read_json(run_dir / PLAN_FILE)
    threshold, name, danger = STATED[lang]
    assert threshold in plan["thinking"]
    train_loss_risks = [r for r in plan["risks"] if name in r]
    assert len(train_loss_risks) == 2 and all(danger in r for r in train_loss_risks), plan["risks"]
    prose = "\n".join([plan["thinking"], plan["expected"], *plan["risks"]])
    assert_states_only_the_lab_threshold(prose, "plan.json")
    assert_states_only_the_lab_threshold(json.dumps(plan, ensure_ascii=False), "plan.json", required=False)

    record = lab.record_path("0.1.0").read_text(encoding="utf-8")
    assert threshold in record
    assert sum(danger in line for line in record.splitlines()) == 2
    assert_states_only_the_lab_threshold(record, "experiment/experiment_0.1.0.md")


def test_lessons_state_every_threshold_of_the_lab():
    from agent.base import lessons_text

    lab_rules = rules.rules_of(rules.GuardrailsConfig(train_loss=rules.rule_from(LAB_RULE)))
    lessons = lessons_text(lab_rules, [])
    for phrase in ("smoothed train loss below 0.2", "inference/train loss ratio above 10",
                   "repetition rate (seq-rep-4) above 80%", "memory selection entropy below 2 nats"):
        assert phrase in lessons, lessons
    assert_states_only_the_lab_threshold(lessons, "lessons_text")
    # and they follow the rules they are given, not a fixed text
    assert "smoothed train loss below 0.1" in lessons_text(rules.rules_of(rules.GuardrailsConfig()), [])


def _analysis_context(lab, state: str, stop_reason):
    from agent.base import AnalysisContext

    cfg = lab.settings().guardrails
    values = {"train_loss": DANGER_LOSS, "train_inference_ratio": 1.2, "repetition_rate": 0.05, "memory_entropy": 3.5}
    ev = {"val_loss": 0.2, "inference_loss": 0.18, "train_loss": DANGER_LOSS, "train_inference_ratio": 1.2,
          "repetition_rate": 0.05, "distinct_2": 0.6, "recall": {},
          "guardrails": rules.levels_only(rules.evaluate(values, cfg))}
    assert ev["guardrails"]["train_loss"] == {"value": DANGER_LOSS, "level": "danger"}
    return AnalysisContext(version="0.1.0", base=None, goal="g", hypothesis="h", expect=None, state=state,
                           stop_reason=stop_reason, config_changes=[],
                           metrics_summary={"steps": 12, "first_loss": 2.0, "last_loss": DANGER_LOSS,
                                            "min_loss": DANGER_LOSS, "smoothed_loss": DANGER_LOSS,
                                            "tokens_per_s": 1000.0, "duration": "5s"},
                           eval=ev, base_eval=None, comparison=[], verdict="inconclusive",
                           verdict_reason="no base to compare with", guardrails=rules.rules_of(cfg),
                           memory_presets=("memory", "hybrid"))


def _analysis_text(analysis) -> str:
    return "\n".join([analysis.training_results, analysis.inference_evaluation, analysis.deep_analysis,
                      analysis.conclusion, *analysis.next_steps])


def test_offline_analysis_of_a_guardrail_stop_states_the_labs_threshold(lab):
    from agent.offline import OfflineAgent

    cfg = lab.settings().guardrails
    rows = [{"step": s, "loss": DANGER_LOSS, "loss_ce": DANGER_LOSS} for s in range(2, 14, 2)]
    stop_reason = rules.should_stop(rules.check_train(rows, cfg))  # what the trainer records
    assert stop_reason == "train_loss 0.15 < 0.2 (danger)"
    ctx = _analysis_context(lab, "guardrail_stopped", stop_reason)
    assert ctx.guardrails["train_loss"] == LAB_RULE
    text = _analysis_text(OfflineAgent().analyse(ctx))
    assert "train_loss 0.15 < 0.2 (danger)" in text and "train_loss = 0.15" in text
    assert_states_only_the_lab_threshold(text, "the offline analysis")


def test_offline_analysis_of_a_danger_train_loss_states_no_other_threshold(lab):
    """A finished run whose train loss is in danger: the analysis names it and states no threshold but 0.2."""
    from agent.offline import OfflineAgent

    text = _analysis_text(OfflineAgent().analyse(_analysis_context(lab, "finished", None)))
    assert "Guardrails in danger: train_loss = 0.15" in text and "(train_loss)" in text
    assert_states_only_the_lab_threshold(text, "the offline analysis", required=False)


def test_analysed_guardrail_stop_record_and_commit_message(lab):
    """The real analysis step on a run a train-loss guardrail stopped: eval levels, analysis,
    commit draft and record all follow the lab's 0.2."""
    from lifecycle.running.analyse import analyse

    result = invoke(lab, "new", "0.1.0", "--goal", "Baseline", "--hypothesis", "A dense model lowers inference loss",
                    "--no-launch")
    assert result.exit_code == 0, result.output
    run_dir = lab.run_dir("0.1.0")
    cfg = load_config(run_dir / CONFIG_FILE)
    start = time.time() - 30
    rows = [{"step": s, "epoch": 0.01 * s, "loss": DANGER_LOSS, "loss_ce": DANGER_LOSS, "loss_aux": 0.0, "lr": 0.003,
             "grad_norm": 0.5, "tokens_per_s": 1000.0, "time": start + s, "elapsed_s": float(s)} for s in range(2, 8, 2)]
    (run_dir / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    live = rules.check_train(rows, cfg.guardrails)
    stop_reason = rules.should_stop(live)
    assert stop_reason == "train_loss 0.15 < 0.2 (danger)"
    values = {"train_loss": DANGER_LOSS, "train_inference_ratio": 1.2, "repetition_rate": 0.05, "memory_entropy": None}
    ev_guardrails = rules.levels_only(rules.evaluate(values, cfg.guardrails))
    (run_dir / EVAL_FILE).write_text(json.dumps({
        "val_loss": 0.2, "inference_loss": 0.18, "train_loss": DANGER_LOSS, "train_inference_ratio": 1.2,
        "repetition_rate": 0.05, "distinct_2": 0.6, "memory_entropy": None, "memory_coverage": None, "memory": {},
        "recall": {}, "samples": [], "guardrails": ev_guardrails, "step": 6, "time": time.time()}), encoding="utf-8")
    update_state(run_dir, state="guardrail_stopped", pid=1 << 22, proc_start=1, started_at=start, ended_at=start + 10,
                 step=6, total_steps=12, guardrails=rules.levels_only(live), stop_reason=stop_reason,
                 train_outcome="guardrail_stopped", evaluated=True, eval_guardrails=ev_guardrails)
    write_exit_code(run_dir, EXIT_GUARDRAIL)

    analyse(run_dir)
    analysis = read_json(run_dir / ANALYSIS_FILE)
    text = "\n".join([analysis["training_results"], analysis["inference_evaluation"], analysis["deep_analysis"],
                      analysis["conclusion"], *analysis["next_steps"]])
    assert "train_loss 0.15 < 0.2 (danger)" in text
    assert_states_only_the_lab_threshold(text, "analysis.json")
    commit = (run_dir / COMMIT_MSG_FILE).read_text(encoding="utf-8")
    assert "guardrail train_loss: 0.15 (danger)" in commit
    assert_states_only_the_lab_threshold(commit, COMMIT_MSG_FILE, required=False)
    record = lab.record_path("0.1.0").read_text(encoding="utf-8")
    assert "train_loss 0.15 < 0.2 (danger)" in record  # the execution record's stop reason
    assert re.search(r"^\| train_loss \| 0\.15 \| 🔴 danger \|$", record, re.M)
    assert_states_only_the_lab_threshold(record, "experiment/experiment_0.1.0.md")
