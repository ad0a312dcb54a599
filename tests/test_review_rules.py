"""Every rule of `minimind review`'s quality standard (lifecycle/document/rules.py `quality_problems`),
each checked on a real record: a drafted experiment of a real lab (`minimind new --no-launch`)
whose run files are then written the way a finished run writes them (metrics.jsonl, eval.json,
state.json, exit_code, and analysis.json by the real `lifecycle.running.analyse.analyse`). Each case
changes the run's files so that exactly one rule is broken, renders the record with
`lifecycle.document.record.render_record`, and expects exactly that one problem. The section and git
record rules cannot be broken through the run's files (the template always writes them), so
those cases edit the rendered text, as a researcher does with `review --edit`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from lab_helpers import invoke, make_lab

from lifecycle.document.record import SECTION_IDS, heading, render_record
from lifecycle.document.rules import quality_problems, split_sections
from minimind.atomic import write_json, write_text
from minimind.config import load_config
from minimind.rundir import (ANALYSIS_FILE, CONFIG_FILE, EVAL_FILE, EXIT_CODE_FILE, EXIT_FINISHED, EXIT_GUARDRAIL,
                             EXIT_STOPPED, METRICS_FILE, PLAN_FILE, current, process_start_time, read_json,
                             update_state, write_exit_code)

LANGS = ("en", "zh")
VERSIONS = {"en": "0.1.0", "zh": "0.2.0"}
GOAL = {"en": "Baseline on the bundled facts", "zh": "在内置事实数据上建立基线"}
HYP = {"en": "A dense model lowers inference loss below uniform", "zh": "稠密模型的推理损失低于均匀分布"}
STEPS = 12


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _finish_like_a_run(run_dir: Path) -> None:
    """Write what a finished run leaves before analysis: metrics rows as training/loop.py logs
    them, eval.json with the keys training/evaluate.py writes (levels by the real guardrail
    rules), state.json as the trainer and pipeline update it, and the pipeline's exit code."""
    from minimind import guardrails as rules

    cfg = load_config(run_dir / CONFIG_FILE)
    start = time.time() - 60
    rows = [{"step": s, "epoch": round(s / 200, 4), "loss": 8.8 - 0.1 * s, "loss_ce": 8.8 - 0.1 * s, "loss_aux": 0.0,
             "lr": 0.003, "grad_norm": 0.5, "tokens_per_s": 10000.0, "time": start + s, "elapsed_s": float(s)}
            for s in range(2, STEPS + 1, 2)]
    rows.append({"step": STEPS, "time": start + STEPS + 1, "eval/val_loss": 7.9, "eval/inference_loss": 8.1,
                 "eval/train_inference_ratio": 1.05, "eval/repetition_rate": 0.1})
    write_text(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows))
    train_loss = rules.smoothed_train_loss([r["loss_ce"] for r in rows if "loss_ce" in r],
                                           cfg.guardrails.smoothing_window)
    values = {"train_loss": train_loss, "train_inference_ratio": 8.1 / train_loss, "repetition_rate": 0.1,
              "memory_entropy": None}
    split = {"p_at_1": 0.2, "mrr": 0.4, "n": 40, "p_at_1_ci": [0.1, 0.3], "mrr_ci": [0.3, 0.5], "chance_p_at_1": 0.1}
    ev = {
        "val_loss": 7.9, "inference_loss": 8.1, "train_loss": train_loss,
        "train_loss_source": f"{METRICS_FILE} (mean of last {cfg.guardrails.smoothing_window} logged steps)",
        "train_inference_ratio": values["train_inference_ratio"], "repetition_rate": 0.1, "distinct_2": 0.6,
        "memory_entropy": None, "memory_coverage": None, "memory": {},
        "recall": {name: dict(split) for name in ("mem_only", "text_only", "both", "held_out")},
        "samples": [{"prompt": "Raipur is", "reference": " a city in India.", "generated": " a city",
                     "sampled": " the city"}] * 3,
        "guardrails": rules.levels_only(rules.evaluate(values, cfg.guardrails)),
        "checkpoint": str(run_dir / "checkpoints" / f"pretrain_{cfg.model['dim']}.pth"), "module": cfg.model_module,
        "step": STEPS, "num_samples": 3, "version": cfg.version, "model_config": cfg.model, "time": time.time(),
    }
    write_json(run_dir / EVAL_FILE, ev)
    pid = _dead_pid()
    update_state(run_dir, state="running", pid=pid, pgid=pid, proc_start=1, trainer_pid=None,
                 started_at=start, ended_at=start + STEPS + 5, heartbeat=start + STEPS, step=STEPS,
                 total_steps=STEPS, last_loss=rows[-2]["loss"], eta_s=0.0, tokens_per_s=10000.0,
                 guardrails=ev["guardrails"], train_outcome="finished", phase="analyse", evaluated=True,
                 eval_time=ev["time"], eval_guardrails=ev["guardrails"])
    write_exit_code(run_dir, EXIT_FINISHED)


@pytest.fixture(scope="module")
def lab(tmp_path_factory, bundled_data):
    """One lab with an English and a Chinese experiment, each with a complete record."""
    from lifecycle.running.analyse import analyse

    lab = make_lab(tmp_path_factory.mktemp("review") / "lab", bundled_data, steps=STEPS)
    for lang in LANGS:
        version = VERSIONS[lang]
        result = invoke(lab, "new", version, "--goal", GOAL[lang], "--hypothesis", HYP[lang], "--lang", lang,
                        "--no-launch")
        assert result.exit_code == 0, result.output
        _finish_like_a_run(lab.run_dir(version))
        analyse(lab.run_dir(version))
        assert read_json(lab.run_dir(version) / ANALYSIS_FILE)["next_steps"]
    return lab


def review(lab, lang: str, run_dir: Path, edit=None) -> list[str]:
    """quality_problems of the record rendered from `run_dir`, as `minimind review` computes it."""
    text = render_record(lab, VERSIONS[lang], lang, run_dir=run_dir)
    if edit is not None:
        edited = edit(text, lang)
        assert edited != text, "the edit changed nothing"
        text = edited
    derived, state = current(run_dir)
    assert read_json(run_dir / PLAN_FILE)["lang"] == lang
    return quality_problems(text, derived, state.stop_reason, lang)


@pytest.fixture
def run_copy(lab, tmp_path):
    """A copy of the complete run of one language, free to break."""
    def make(lang: str) -> Path:
        copy = tmp_path / "runs" / VERSIONS[lang]
        shutil.copytree(lab.run_dir(VERSIONS[lang]), copy)
        return copy
    return make


# --- how a run's files break one rule ------------------------------------------------

def json_field(file_name, name, value):
    def change(run_dir):
        data = read_json(run_dir / file_name)
        assert name in data
        write_json(run_dir / file_name, {**data, name: value})
    return change


def plan_field(name, value):
    return json_field(PLAN_FILE, name, value)


def analysis_field(name, value):
    return json_field(ANALYSIS_FILE, name, value)


def state(exit_code, **fields):
    def change(run_dir):
        changes = dict(fields)
        if exit_code is None:
            (run_dir / EXIT_CODE_FILE).unlink()
        else:
            write_exit_code(run_dir, exit_code)
        if changes.get("pid") == "self":  # this test process: alive, with its real start time
            changes.update(pid=os.getpid(), pgid=os.getpid(), proc_start=process_start_time(os.getpid()))
        update_state(run_dir, **changes)
    return change


def remove(name):
    def change(run_dir):
        (run_dir / name).unlink()
    return change


def drop_heading(section_id):
    def edit(text, lang):
        return text.replace(f"## {heading(section_id, lang)}\n", "")
    return edit


def empty_git_section(text, lang):
    git = f"## {heading('git', lang)}\n"
    start = text.index(git) + len(git)
    end = text.index(f"## {heading('basic', lang)}\n")
    return text[:start] + "\n(to be filled in)\n\n" + text[end:]


NOT_DONE = "training has not completed (state: {})"
CASES = [
    # (id, change to the run's files, edit of the rendered text, expected problems)
    ("complete", None, None, []),
    ("stopped-with-reason", state(EXIT_STOPPED, state="stopped", train_outcome="stopped", phase="stopped",
                                  stop_reason="signal SIGTERM"), None, []),
    ("guardrail-stopped-with-reason", state(EXIT_GUARDRAIL, state="guardrail_stopped", train_outcome="guardrail_stopped",
                                            stop_reason="train_loss 0.05 < 0.1 (danger)"), None, []),
    ("section-config-missing", None, drop_heading("config"), ["section '{config}' is missing"]),
    ("section-execution-missing", None, drop_heading("execution"), ["section '{execution}' is missing"]),
    ("section-training-missing", None, drop_heading("training"), ["section '{training}' is missing"]),
    ("section-deep-analysis-missing", None, drop_heading("analysis"), ["section '{analysis}' is missing"]),
    ("goal-empty", plan_field("goal", ""), None, ["the goal is empty"]),
    ("hypothesis-empty", plan_field("hypothesis", ""), None, ["the hypothesis is empty"]),
    ("thinking-empty", plan_field("thinking", ""), None, ["the AI thinking process is not recorded"]),
    ("git-record-empty", None, empty_git_section, ["the git change record is empty"]),
    ("running", state(None, state="running", pid="self", train_outcome=None, phase="train"), None,
     [NOT_DONE.format("running")]),
    ("drafted", state(None, state="drafted", pid=None, pgid=None, proc_start=None, train_outcome=None, phase=None),
     None, [NOT_DONE.format("drafted")]),
    ("lost", state(None, state="running", train_outcome=None, phase="train"), None, [NOT_DONE.format("lost")]),
    ("failed", state(1, train_outcome="failed", phase="done", error="training exited with 1"), None,
     ["training failed: the record must explain it before approval"]),
    ("stopped-without-reason", state(EXIT_STOPPED, state="stopped", train_outcome="stopped", phase="stopped",
                                     stop_reason=None), None, ["the run was stopped without a recorded reason"]),
    ("guardrail-stopped-without-reason", state(EXIT_GUARDRAIL, state="guardrail_stopped",
                                               train_outcome="guardrail_stopped", stop_reason=None), None,
     ["the run was guardrail_stopped without a recorded reason"]),
    ("evaluation-missing", remove(EVAL_FILE), None, ["the inference evaluation is missing (minimind eval)"]),
    ("next-steps-missing", analysis_field("next_steps", []), None, ["the conclusion with next steps is missing"]),
    ("analysis-missing", remove(ANALYSIS_FILE), None, ["the conclusion with next steps is missing"]),
]


def _case_id(case):
    return case.values[0] if hasattr(case, "values") else case[0]


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("name, change, edit, expected", CASES, ids=[_case_id(c) for c in CASES])
def test_each_rule_of_the_quality_standard(lab, run_copy, lang, name, change, edit, expected):
    run_dir = run_copy(lang)
    if change is not None:
        change(run_dir)
    expected = [e.format(**{i: heading(i, lang) for i in SECTION_IDS}) for e in expected]
    assert review(lab, lang, run_dir, edit) == expected


@pytest.mark.parametrize("lang", LANGS)
def test_the_complete_record_is_the_one_analyse_wrote(lab, lang):
    """The record `analyse` wrote into experiment/ meets the standard, and has every section in order."""
    version = VERSIONS[lang]
    text = lab.record_path(version).read_text(encoding="utf-8")
    derived, st = current(lab.run_dir(version))
    assert derived == "finished"
    assert quality_problems(text, derived, st.stop_reason, lang) == []
    sections = split_sections(text)
    assert list(sections) == [heading(i, lang) for i in SECTION_IDS]
    basic = sections[heading("basic", lang)]
    assert GOAL[lang] in basic and HYP[lang] in basic
    assert re.search(r"^- \S", sections[heading("conclusion", lang)], re.M)


@pytest.mark.parametrize("lang", LANGS)
def test_problems_add_up(lab, run_copy, lang):
    """Rules are independent: a run still training, never evaluated or analysed, fails three of them."""
    run_dir = run_copy(lang)
    state(None, state="running", pid="self", train_outcome=None, phase="train")(run_dir)
    remove(EVAL_FILE)(run_dir)
    remove(ANALYSIS_FILE)(run_dir)
    assert review(lab, lang, run_dir) == [NOT_DONE.format("running"),
                                          "the inference evaluation is missing (minimind eval)",
                                          "the conclusion with next steps is missing"]


@pytest.mark.parametrize("lang", LANGS)
def test_review_approve_refuses_a_broken_record_and_accepts_the_complete_one(lab, run_copy, lang, tmp_path):
    """The CLI gate uses the same rules: refused while one is broken, approved once none is."""
    version = VERSIONS[lang]
    run_dir = lab.run_dir(version)
    saved = tmp_path / "saved"
    shutil.copytree(run_dir, saved)
    try:
        write_exit_code(run_dir, 1)  # training failed
        result = invoke(lab, "review", version, "--approve")
        assert result.exit_code != 0 and "training failed" in result.output, result.output
        assert not read_json(run_dir / "state.json")["reviewed"]
        write_exit_code(run_dir, EXIT_FINISHED)
        result = invoke(lab, "review", version, "--approve")
        assert result.exit_code == 0, result.output
        assert read_json(run_dir / "state.json")["reviewed"] is True
    finally:
        shutil.rmtree(run_dir)
        shutil.copytree(saved, run_dir)
