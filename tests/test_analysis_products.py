"""What the analysis proposes beyond its verdict (issue 19): the next experiment, the lesson,
the next steps. Each is optional: one that does not validate is dropped with its reason in
the record and never fails the analysis; a numeric proposal respects its setting's
constraints; a lesson names only a cause the data supports; accepting a lesson is its
own act (`review --approve --accept-lesson`).

Experiments are real drafts (`minimind new --no-launch`) whose run files are written the
way a finished run writes them (no training: the numbers are the test's), then analysed by
the real `lifecycle.running.analyse`.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import pytest

from lab_helpers import invoke, make_lab

from minimind.atomic import write_json, write_text
from minimind.config import load_config
from minimind.rundir import (ANALYSIS_FILE, CONFIG_FILE, EVAL_FILE, EXIT_FINISHED, LESSON_FILE, METRICS_FILE,
                             NEXT_FILE, read_json, update_state, write_exit_code)

STEPS = 12


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def finish(run_dir: Path, *, loss: float = 6.0, inference_loss: float = 8.1, repetition: float = 0.1,
           entropy: float | None = None) -> None:
    """Write what a finished run leaves before analysis (metrics, eval.json with the real
    guardrail levels, state.json, exit code), with the given numbers."""
    from minimind import guardrails as rules

    cfg = load_config(run_dir / CONFIG_FILE)
    start = time.time() - 60
    rows = [{"step": s, "loss": loss + 0.01 * (STEPS - s), "loss_ce": loss + 0.01 * (STEPS - s), "lr": 0.003,
             "tokens_per_s": 10000.0, "time": start + s, "elapsed_s": float(s)} for s in range(2, STEPS + 1, 2)]
    write_text(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows))
    train_loss = rules.smoothed_train_loss([r["loss_ce"] for r in rows], cfg.guardrails.smoothing_window)
    values = {"train_loss": train_loss, "train_inference_ratio": inference_loss / train_loss,
              "repetition_rate": repetition, "memory_entropy": entropy}
    ev = {"val_loss": inference_loss - 0.2, "inference_loss": inference_loss, "train_loss": train_loss,
          "train_inference_ratio": values["train_inference_ratio"], "repetition_rate": repetition, "distinct_2": 0.5,
          "memory_entropy": entropy, "memory": {}, "recall": {},
          "samples": [{"prompt": "Raipur is", "reference": " a city in India.", "generated": " ………", "repetition": repetition}],
          "guardrails": rules.levels_only(rules.evaluate(values, cfg.guardrails)), "step": STEPS, "num_samples": 3,
          "version": cfg.version, "model_config": cfg.model, "time": time.time()}
    write_json(run_dir / EVAL_FILE, ev)
    pid = _dead_pid()
    update_state(run_dir, state="running", pid=pid, pgid=pid, proc_start=1, trainer_pid=None, started_at=start,
                 ended_at=start + STEPS + 5, heartbeat=start + STEPS, step=STEPS, total_steps=STEPS,
                 last_loss=rows[-1]["loss"], train_outcome="finished", phase="analyse", evaluated=True,
                 eval_time=ev["time"], eval_guardrails=ev["guardrails"])
    write_exit_code(run_dir, EXIT_FINISHED)


def draft(lab, version: str, *args: str) -> Path:
    result = invoke(lab, "new", version, "--no-launch", *args)
    assert result.exit_code == 0, result.output
    return lab.run_dir(version)


@pytest.fixture
def lab(tmp_path, bundled_data):
    return make_lab(tmp_path / "lab", bundled_data, steps=STEPS)


# --- a dead end: a proposal that does not validate never fails the analysis ----------------

def test_a_changed_knowledge_num_after_a_dense_base_is_analysed(lab):
    """The issue's case: a dense base, then a memory run with another knowledge_num, refuted.
    The half-step rule proposed the plain midpoint (not a perfect square) and the analysis
    failed every time; now the proposal is a square between the two, and analyse succeeds."""
    from lifecycle.running.analyse import analyse

    finish(draft(lab, "0.1.0", "--goal", "Dense baseline", "--hypothesis", "A dense model learns the facts"))
    analyse(lab.run_dir("0.1.0"))
    run = draft(lab, "0.1.1", "--goal", "A small memory bank", "--hypothesis", "A memory bank lowers inference loss",
                "--expect", "inference_loss < 1", "--set", "preset=memory", "--set", "knowledge_num=64")
    finish(run, inference_loss=8.4)
    analyse(run)
    analysis = read_json(run / ANALYSIS_FILE)
    assert analysis["verdict_info"]["verdict"] == "refuted"
    proposal = read_json(run / NEXT_FILE)
    sets = dict(s.split("=", 1) for s in proposal["sets"])
    knowledge_num = int(sets["model.knowledge_num"])
    assert 64 < knowledge_num < 256 and math.isqrt(knowledge_num) ** 2 == knowledge_num
    result = invoke(lab, "analyse", "0.1.1")
    assert result.exit_code == 0, result.output


# --- every proposal rule against every constrained setting --------------------------------

def _resolved(lab, **model) -> dict:
    """The lab's resolved config for a first experiment (what `new` would start from)."""
    from lifecycle.knowledge.bases import base_config
    from models.registry import model_schema

    cfg = base_config(lab, lab.settings(), None, model_schema(lab)[0])
    cfg["model"].update(model)
    return cfg


def _other_value(validator, cfg: dict, key: str, value, spec: dict):
    """A valid value of `key` far enough from `value` that something lies between them."""
    kind = spec.get("type")
    lo, hi = spec.get("min"), spec.get("max")
    if kind == "int":
        options = [value * 4, value * 2, value // 4, value // 2, value + 8, value - 8, lo, hi]
    else:
        options = [value * 2 if value else 0.4, value / 2, lo, hi, value + 0.2, 0.4]
    for option in options:
        if option is None or option == value or abs(option - value) < (2 if kind == "int" else 1e-6):
            continue
        option = int(option) if kind == "int" else float(option)
        if validator.valid(cfg, [(key, option)]):
            return option
    return None


def _numeric_keys(validator) -> list[str]:
    return [k for k, spec in validator.schema.items() if spec.get("type") in ("int", "float")]


@pytest.mark.parametrize("preset", ["original", "memory"])
def test_the_half_step_rule_respects_every_constrained_setting(lab, preset):
    """Refuted with one numeric change, for every numeric model.* and train.* setting: the
    proposal validates as `new` validates it, lies strictly between the two values, keeps the
    setting's type, and a float carries no binary noise."""
    from lifecycle.knowledge.proposal import Validator, rule_proposal, set_text

    validator = Validator(lab)
    run_cfg = _resolved(lab, preset=preset)
    checked = 0
    for key in _numeric_keys(validator):
        section, name = key.split(".")
        value = run_cfg[section].get(name)
        if value is None or isinstance(value, bool):
            continue
        base_value = _other_value(validator, run_cfg, key, value, validator.schema[key])
        if base_value is None:
            continue
        sets, *_ = rule_proposal(validator, "0.1.1", run_cfg, "refuted", [], [(key, base_value, value)], [])
        validator.config(run_cfg, sets)  # raises if the proposal does not validate
        proposed = dict(sets)
        if key in proposed:
            half = proposed[key]
            assert min(base_value, value) < half < max(base_value, value), (key, base_value, value, half)
            assert type(half) is type(value), (key, half)
            if isinstance(half, float):
                assert len(set_text(half).replace("0.", "").replace("e-", "")) <= 8, (key, half)
            checked += 1
        else:
            assert list(proposed) == ["train.seed"], (key, sets)  # nothing valid between: another seed
    assert checked >= 20


@pytest.mark.parametrize("a, b, expected", [(64, 256, 169), (4096, 1_048_576, 525_625)])
def test_knowledge_num_halfway_is_a_perfect_square(lab, a, b, expected):
    from lifecycle.knowledge.proposal import Validator, rule_proposal

    validator = Validator(lab)
    cfg = _resolved(lab, preset="memory", knowledge_num=b)
    sets, *_ = rule_proposal(validator, "0.1.1", cfg, "refuted", [], [("model.knowledge_num", a, b)], [])
    assert dict(sets)["model.knowledge_num"] == expected


def test_a_float_halfway_is_written_as_a_person_writes_it(lab):
    from lifecycle.knowledge.proposal import Validator, rule_proposal, set_text

    validator = Validator(lab)
    cfg = _resolved(lab, preset="memory", freeze_ratio=0.4)
    assert (0.2 + 0.4) / 2 == 0.30000000000000004
    sets, *_ = rule_proposal(validator, "0.1.1", cfg, "refuted", [], [("model.freeze_ratio", 0.2, 0.4)], [])
    assert [f"{k}={set_text(v)}" for k, v in sets] == ["model.freeze_ratio=0.3"]


RULE_CASES = {
    # rule: (verdict, dangers, causes, model overrides, train overrides at the edge of their range)
    "entropy": ("inconclusive", ["memory_entropy"], [], {"preset": "memory", "num_candidates": 16,
                                                         "knowledge_num": 256, "diversity_loss_weight": 80.0}, {}),
    "entropy-more": ("inconclusive", ["memory_entropy"], [], {"preset": "memory", "num_candidates": 8}, {}),
    "loss": ("refuted", ["train_loss"], [], {}, {"learning_rate": 1.5e-7}),
    "longer-steps": ("supported", [], [], {}, {"max_steps": 90_000_000}),
    "longer-epochs": ("inconclusive", [], [], {}, {"max_steps": 0, "epochs": 1000}),
    "seed": ("refuted", [], [], {}, {"seed": 2**31 - 1}),
    "under": ("inconclusive", ["repetition_rate"],
              [{"kind": "under_trained", "names": ["under-trained"], "train_loss": 8.27, "uniform_loss": 8.76}], {}, {}),
    "forced": ("refuted", ["repetition_rate"],
               [{"kind": "forced_check", "names": ["memory_query"], "details": ["x + h_attn"], "lessons": [""]}], {}, {}),
}


@pytest.mark.parametrize("rule", sorted(RULE_CASES))
def test_every_rule_proposes_a_config_that_validates(lab, rule):
    """Each rule at the edge of the ranges it touches: the whole proposal (with its cost
    estimate) is built and its config validates as `new` validates it."""
    from lifecycle.knowledge import proposal

    verdict, dangers, causes, model, train = RULE_CASES[rule]
    cfg = _resolved(lab, **model)
    cfg["train"].update(train)
    validator = proposal.Validator(lab)
    validator.config(cfg, [])  # the starting point itself is valid
    out = proposal.build(lab, "0.1.1", cfg, verdict, dangers, [], causes=causes)
    sets = [tuple(s.split("=", 1)) for s in out["sets"]]
    from minimind.config import parse_value

    validator.config(cfg, [(k, parse_value(v)) for k, v in sets])
    assert "refuted result repeats" not in out["hypothesis"] or verdict == "refuted"
    if rule == "under":
        assert "under-trained" in out["goal"] and out["sets"][0].startswith("train.max_steps=")
    if rule == "forced":
        assert out["sets"] == [] and "memory_query" in out["goal"]


def test_a_product_that_does_not_validate_is_dropped_with_its_reason(lab, monkeypatch):
    """Whatever a rule proposes, the analysis completes: a next experiment that does not
    validate and a lesson that cannot be made are dropped, their files removed, and the
    record says why."""
    from lifecycle.running import analyse as analyse_mod
    from lifecycle.knowledge import lessons, proposal

    run = draft(lab, "0.1.0", "--goal", "Dense baseline", "--hypothesis", "A dense model learns the facts")
    finish(run)
    analyse_mod.analyse(run)
    assert (run / NEXT_FILE).exists()
    monkeypatch.setattr(proposal, "rule_proposal", lambda *a, **k: ([("model.knowledge_num", 1000)], "g", "h", "w"))

    def broken(*args, **kwargs):
        raise KeyError("guardrails")

    monkeypatch.setattr(lessons, "propose", broken)
    record_path = analyse_mod.analyse(run)
    notes = read_json(run / ANALYSIS_FILE)["notes"]
    assert any("next experiment was dropped" in n and "perfect square" in n for n in notes), notes
    assert any("lesson was dropped" in n and "KeyError" in n for n in notes), notes
    assert not (run / NEXT_FILE).exists() and not (run / LESSON_FILE).exists()
    assert "next experiment was dropped" in record_path.read_text()
    assert invoke(lab, "review", "0.1.0", "--approve").exit_code == 0


# --- lessons and next steps the run supports ------------------------------------------------

def _products(run: Path) -> tuple[dict, dict | None, dict | None]:
    return read_json(run / ANALYSIS_FILE), read_json(run / LESSON_FILE), read_json(run / NEXT_FILE)


def test_an_under_trained_run_is_called_under_trained_not_overfitting(lab):
    """The issue's dense first run: train loss 8.27, repetitive "………" output. It was called
    overfitting and told to roll back an architecture change and check the memory query."""
    from lifecycle.running.analyse import analyse

    run = draft(lab, "0.1.0", "--goal", "Dense baseline", "--hypothesis", "A dense model learns the facts")
    finish(run, loss=8.27, inference_loss=8.5, repetition=0.98)
    analyse(run)
    analysis, lesson, nxt = _products(run)
    assert lesson is not None and lesson["cause"] == "under_trained"
    assert "under-trained" in lesson["text"] and "train loss 8.3" in lesson["text"]
    assert "overfitting signs" not in lesson["text"] and "drove" not in lesson["text"]
    steps = " ".join(analysis["next_steps"])
    assert "under-trained" in steps
    assert "architecture" not in steps and "memory query" not in steps and "h_attn" not in steps
    assert "under-trained" in nxt["goal"] and nxt["sets"][0].startswith("train.max_steps=")


def test_a_danger_the_base_already_had_is_not_blamed_on_the_change(lab):
    """repetition 0.9778 in the base, 0.9767 after the change: both in danger, nothing moved."""
    from lifecycle.running.analyse import analyse

    finish(draft(lab, "0.1.0", "--goal", "Dense baseline", "--hypothesis", "A dense model learns the facts"),
           repetition=0.9778)
    analyse(lab.run_dir("0.1.0"))
    run = draft(lab, "0.1.1", "--goal", "Faster learning", "--hypothesis", "A higher learning rate lowers inference loss",
                "--expect", "inference_loss < 1", "--set", "learning_rate=0.004")
    finish(run, repetition=0.9767)
    analyse(run)
    analysis, lesson, nxt = _products(run)
    assert analysis["verdict_info"]["verdict"] == "refuted"
    assert lesson is None  # no cause the data supports: a refuted verdict alone teaches nothing certain
    steps = " ".join(analysis["next_steps"])
    assert "Roll back" not in steps and "moved into danger" not in steps
    # refuted with a numeric change: half the step, a valid learning rate between the two
    assert nxt["sets"] == ["train.learning_rate=0.0035"]


def test_a_change_that_moves_a_guardrail_into_danger_is_named(lab):
    from lifecycle.running.analyse import analyse

    finish(draft(lab, "0.1.0", "--goal", "Dense baseline", "--hypothesis", "A dense model learns the facts"),
           repetition=0.3)
    analyse(lab.run_dir("0.1.0"))
    run = draft(lab, "0.1.1", "--goal", "Faster learning", "--hypothesis", "A higher learning rate lowers inference loss",
                "--set", "learning_rate=0.004")
    finish(run, repetition=0.95)
    analyse(run)
    analysis, lesson, _ = _products(run)
    assert lesson["cause"] == "guardrail_moved" and "train.learning_rate" in lesson["text"]
    assert "repetition_rate safe 0.3 → danger 0.95" in lesson["text"]
    steps = " ".join(analysis["next_steps"])
    assert "Step back the config change (train.learning_rate)" in steps and "architecture" not in steps


def test_a_forced_failed_check_is_named_first(lab):
    """The issue's run: launched with --force over a failed memory_query (x + h_attn), with a
    config change beside it. The lesson blamed the config; it must name the check first."""
    from lifecycle.running.analyse import analyse
    from test_preflight import MEMORY_READS_H, edited

    finish(draft(lab, "0.1.0", "--goal", "Dense baseline", "--hypothesis", "A dense model learns the facts"),
           repetition=0.3)
    analyse(lab.run_dir("0.1.0"))
    (lab.models_dir / "model.py").write_text(edited(MEMORY_READS_H))
    run = draft(lab, "0.1.1", "--goal", "Memory", "--hypothesis", "The memory layer lowers inference loss",
                "--set", "preset=memory", "--set", "learning_rate=0.004", "--force", "--reason", "reproducing 1.4.3")
    finish(run, repetition=0.95, entropy=3.4)
    analyse(run)
    analysis, lesson, nxt = _products(run)
    assert lesson["cause"] == "forced_check" and "memory_query" in lesson["text"]
    assert "learning_rate" not in lesson["text"] and "x + h_attn" in lesson["evidence"]
    assert "memory_query" in analysis["next_steps"][0]
    assert "memory_query" in nxt["goal"] and nxt["sets"] == []


def test_an_inconclusive_first_run_gets_no_refuted_wording(lab):
    from lifecycle.running.analyse import analyse

    run = draft(lab, "0.1.0", "--goal", "Dense baseline", "--hypothesis", "A dense model learns the facts")
    finish(run, repetition=0.95)
    analyse(run)
    analysis, lesson, nxt = _products(run)
    assert analysis["verdict_info"]["verdict"] != "refuted"
    text = json.dumps([analysis["next_steps"], nxt], ensure_ascii=False)
    assert "refuted" not in text and "Roll back" not in text and "h_attn" not in text
    assert "Evaluate the base again" not in text and "exceeds noise" not in text  # there is no base
    assert nxt["goal"] == "Train the reference configuration longer"
    assert lesson is None


def test_approving_never_accepts_the_lesson_on_the_side(lab):
    from lifecycle.running.analyse import analyse

    run = draft(lab, "0.1.0", "--goal", "Dense baseline", "--hypothesis", "A dense model learns the facts")
    finish(run, loss=8.27, inference_loss=8.5)
    analyse(run)
    lessons_file = lab.experiment_dir / "LESSONS.md"
    before = lessons_file.read_text()
    assert invoke(lab, "review", "0.1.0", "--accept-lesson").exit_code == 2
    result = invoke(lab, "review", "0.1.0", "--approve")
    assert result.exit_code == 0, result.output
    assert "stays proposed" in result.output and "--accept-lesson" in result.output
    assert lessons_file.read_text() == before and read_json(run / LESSON_FILE)["status"] == "proposed"
    result = invoke(lab, "review", "0.1.0", "--approve", "--accept-lesson")
    assert result.exit_code == 0 and "Lesson accepted" in result.output, result.output
    lesson = read_json(run / LESSON_FILE)
    assert lesson["status"] == "accepted" and lesson["text"] in lessons_file.read_text()


def test_at_a_terminal_approving_asks_about_the_lesson(lab, monkeypatch):
    """The prompt is the other explicit act: its default is no; "y" accepts."""
    from click.testing import CliRunner

    import cli
    from lifecycle import review
    from lifecycle.running.analyse import analyse

    run = draft(lab, "0.1.0", "--goal", "Dense baseline", "--hypothesis", "A dense model learns the facts")
    finish(run, loss=8.27, inference_loss=8.5)
    analyse(run)
    monkeypatch.setattr(review, "_interactive", lambda: True)
    env = {"MINIMIND_LAB": str(lab.root)}
    result = CliRunner().invoke(cli.main, ["review", "0.1.0", "--approve"], input="\n", env=env)
    assert result.exit_code == 0 and "Accept the proposed lesson" in result.output, result.output
    assert read_json(run / LESSON_FILE)["status"] == "proposed"
    result = CliRunner().invoke(cli.main, ["review", "0.1.0", "--approve"], input="y\n", env=env)
    assert result.exit_code == 0 and "Lesson accepted" in result.output, result.output
    assert read_json(run / LESSON_FILE)["status"] == "accepted"


def test_a_zh_record_gets_its_lesson_next_steps_and_proposal_in_chinese(lab):
    import re

    from lifecycle.running.analyse import analyse

    run = draft(lab, "0.2.0", "--goal", "稠密基线", "--hypothesis", "稠密模型学会事实", "--lang", "zh")
    finish(run, loss=8.27, inference_loss=8.5, repetition=0.98)
    analyse(run)
    analysis, lesson, nxt = _products(run)
    assert "训练不足" in lesson["text"] and "训练不足" in " ".join(analysis["next_steps"]) and "训练不足" in nxt["goal"]
    for text in (lesson["text"], *analysis["next_steps"], nxt["goal"], nxt["hypothesis"], nxt["why"]):
        assert not re.findall(r"[A-Za-z]+(?:[ ,;]+[A-Za-z]+){3,}", re.sub(r"`[^`]*`", "", text)), text


def test_changed_symbols_name_the_functions_a_diff_touches():
    import difflib

    from lifecycle.running.analyse import changed_symbols

    old = "import x\n\nclass Memory:\n    def read(self):\n        return 1\n\n    def write(self):\n        pass\n\n\ndef helper():\n    return 2\n"
    new = old.replace("return 1", "return 3").replace("return 2", "return 4").replace("import x", "import y")
    diff = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "a", "b", n=1))
    assert changed_symbols(diff, old, new) == ["Memory.read", "helper"]  # the import is module level
