"""The record cannot contradict its numbers, noise is not called a change, and a failed agent
call never fails a trained run (issue 11), end to end in one tiny lab:

- 0.1.0 dense baseline, 0.1.1 the same config with another seed (offline agent): the
  comparison is within noise and the record quotes the intervals;
- 0.1.2 through a fake Messages API: a 529 storm during draft_commit leaves it finished with
  analysis_failed; `minimind analyse` with a model that claims "supported" (and then one
  that invents numbers) on a refuted experiment gives a record and commit message that say
  refuted and note the replacement; review --approve and commit work.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from agent import calllog
from fake_anthropic import FakeAnthropic
from lab_helpers import invoke, make_lab, wait_state

API_KEY = "sk-ant-truth-test-0123456789-SECRET"
GOAL = "Baseline on the bundled facts"
HYP = "A dense model lowers inference loss"
LIAR = "The hypothesis is strongly supported. ✅ hypothesis supported"
INVENTED = "The inference loss 0.01 is far below the base."
PROSE_FIELDS = ("training_results", "inference_evaluation", "deep_analysis", "conclusion")


def _liar_analysis(text: str) -> dict:
    return {**{f: text for f in PROSE_FIELDS}, "next_steps": [text]}


def _liar_commit(text: str, version: str) -> dict:
    return {"title": f"{version}: hypothesis SUPPORTED", "improvements": [text], "core_changes": {}, "next_steps": [text]}


GOOD_ANALYSIS = {"training_results": "Training finished.", "inference_evaluation": "Evaluated.",
                 "deep_analysis": "See the table.", "conclusion": "See the verdict.", "next_steps": ["Try another seed."]}
PLAN = {"thinking": "Repeat the baseline with another seed to see the run-to-run noise of this lab.",
        "changes": {}, "rationale": {}, "expected": "No real change.", "risks": ["none"]}


@pytest.fixture(scope="module")
def server():
    fake = FakeAnthropic().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, bundled, server):
    """One lab, three experiments trained (in parallel where they can be)."""
    lab = make_lab(tmp_path_factory.mktemp("truth") / "lab", bundled)
    settings = lab.settings_path.read_text()
    settings = settings.replace("agent:\n  backend: offline\n", "agent:\n  backend: offline\n  max_retries: 1\n")
    lab.settings_path.write_text(settings.replace("num_samples: 3", "num_samples: 8"))  # 8 items: an interval
    assert invoke(lab, "new", "0.1.0", "--goal", GOAL, "--hypothesis", HYP).exit_code == 0
    assert wait_state(lab, "0.1.0") == "finished"
    result = invoke(lab, "new", "0.1.1", "--goal", "Same config, another seed", "--hypothesis", HYP,
                    "--set", "seed=7")
    assert result.exit_code == 0, result.output
    # 0.1.2: refuted by construction (inference loss is nowhere near 1000); the fake API plans it,
    # writes a fine analysis, then answers draft_commit with 529 until the retries run out.
    server.reply_tool("propose_plan", PLAN)
    server.reply_tool("write_analysis", GOOD_ANALYSIS)
    server.reply_error(529, "Overloaded")
    server.reply_error(529, "Overloaded")
    env = {"ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": server.url}
    result = invoke(lab, "new", "0.1.2", "--base", "0.1.0", "--goal", "Another seed, claimed as a big win",
                    "--hypothesis", HYP, "--expect", "inference_loss > 1000", "--set", "seed=9", "--agent", "claude",
                    env=env)
    assert result.exit_code == 0, result.output
    assert wait_state(lab, "0.1.1") == "finished"
    assert wait_state(lab, "0.1.2") == "finished"
    return lab, env


def test_same_config_other_seed_is_within_noise(trained):
    lab, _ = trained
    ev = json.loads((lab.run_dir("0.1.1") / "eval.json").read_text())
    base = json.loads((lab.run_dir("0.1.0") / "eval.json").read_text())
    assert ev["per_item"]["val"]["keys"] == base["per_item"]["val"]["keys"]  # the same documents
    assert len(ev["per_item"]["inference"]["ce"]) == ev["num_samples"]
    assert set(ev["per_item"]["recall"]) == set(ev["recall"])
    analysis = json.loads((lab.run_dir("0.1.1") / "analysis.json").read_text())
    assert analysis["verdict_info"]["verdict"] == "inconclusive", analysis["verdict_info"]
    assert "within noise" in analysis["verdict_info"]["reason"] and "95% CI" in analysis["verdict_info"]["reason"]
    record = lab.record_path("0.1.1").read_text()
    assert "**Hypothesis verdict: inconclusive**" in record and "95% CI [" in record
    assert "Chance control:" in record and "held_out P@1" in record
    # every marked change in the table has its interval; the offline prose names what is noise
    rows = {r["metric"]: r for r in analysis["comparison"]}
    assert rows["inference_loss"]["ci"] is not None and rows["inference_loss"]["mark"] == "≈"
    assert all(r["ci"] for r in rows.values() if r["mark"] in ("✅", "❌"))
    assert "Within noise" in record


def test_529_during_draft_commit_leaves_the_run_finished_with_analysis_failed(trained):
    lab, _ = trained
    (status,) = [s for s in json.loads(invoke(lab, "status", "--json").output) if s["version"] == "0.1.2"]
    assert status["state"] == "finished" and status["evaluated"]
    assert status["analysis_failed"] and "529" in status["analysis_error"] and not status["analysed"]
    detail = invoke(lab, "status", "0.1.2").output
    assert "analysis failed" in detail and "minimind analyse 0.1.2" in detail
    review = invoke(lab, "review", "0.1.2")
    assert "the analysis failed after training" in review.output and "minimind analyse 0.1.2" in review.output
    assert "training failed" not in review.output
    calls = calllog.read_calls(lab.run_dir("0.1.2") / "agent")
    failed = [c for c in calls if c["step"] == "draft_commit"]
    assert len(failed) == 2 and all(c["cost_usd"] > 0 and c.get("estimated") for c in failed)


@pytest.mark.parametrize("text", [LIAR, INVENTED], ids=["claims-supported", "invented-number"])
def test_analyse_replaces_prose_that_contradicts_a_refuted_verdict(trained, server, text):
    lab, env = trained
    for _ in range(2):
        server.reply_tool("write_analysis", _liar_analysis(text))
    for _ in range(2):
        server.reply_tool("draft_commit", _liar_commit(text, "0.1.2"))
    result = invoke(lab, "analyse", "0.1.2", env=env)
    assert result.exit_code == 0, result.output
    assert "hypothesis refuted" in result.output
    record = lab.record_path("0.1.2").read_text()
    conclusion = record.split("## 🎯 Conclusion", 1)[1]
    assert "**Hypothesis verdict: refuted**" in conclusion
    assert text not in record
    assert "replaced by the computed text" in record
    assert re.search(r"❌ .*inference_loss|missed", conclusion)
    message = (lab.run_dir("0.1.2") / "commit_message.md").read_text()
    assert "supported" not in message.lower().replace("not supported", ""), message
    assert not re.search(r"(?<![\d.])0\.01(?!\d)", message)
    assert message.splitlines()[0].endswith("(hypothesis refuted)")
    results = message.split("## Results", 1)[1]
    assert results.lstrip().startswith("❌ hypothesis refuted")
    state = json.loads((lab.run_dir("0.1.2") / "state.json").read_text())
    assert state["analysed"] and not state["analysis_failed"] and state["state"] != "failed"


def _commit_reply(server) -> None:
    server.reply_tool("draft_commit", {"title": "Another seed", "improvements": ["seed 9"], "core_changes": {},
                                       "next_steps": ["Keep the base."]})


def test_the_models_next_experiment_and_lesson_land_in_the_lab(trained, server):
    """Under claude the analysis proposes the lesson and the next experiment (issue 12); code validates
    them, next.json carries the model's, and `new --from-proposal` uses it."""
    lab, env = trained
    ev = json.loads((lab.run_dir("0.1.2") / "eval.json").read_text())
    inference = f"{ev['inference_loss']:.4g}"
    before = len(server.requests)
    server.reply_tool("write_analysis", {**GOOD_ANALYSIS, "lesson": {
        "text": "Under-trained at 12 steps, a second seed is not a result: do not claim a win from one run.",
        "evidence": [f"inference loss {inference}, far from the expected 1000"]},
        "next_experiment": {"goal": "Lower the learning rate", "hypothesis": "A lower learning rate lowers inference loss",
                            "sets": {"train.learning_rate": 0.0003, "model.dropout": 0.1},
                            "expect": "inference_loss < base", "why": "the seed alone changed nothing"}})
    _commit_reply(server)
    result = invoke(lab, "analyse", "0.1.2", env=env)
    assert result.exit_code == 0, result.output
    tool = server.requests[before]["body"]["tools"][0]["input_schema"]
    assert {"lesson", "next_experiment"} <= set(tool["properties"]) and "next_experiment" not in tool["required"]
    assert "train.learning_rate" in tool["properties"]["next_experiment"]["properties"]["sets"]["properties"]
    nxt = json.loads((lab.run_dir("0.1.2") / "next.json").read_text())
    assert nxt["proposed_by"] == "claude" and nxt["goal"] == "Lower the learning rate" and "fallback_reason" not in nxt
    assert nxt["sets"] == ["train.learning_rate=0.0003", "model.dropout=0.1"] and nxt["estimate"]["lines"]
    lesson = json.loads((lab.run_dir("0.1.2") / "lesson.json").read_text())
    assert lesson["proposed_by"] == "claude" and inference in lesson["evidence"]
    record = lab.record_path("0.1.2").read_text()
    assert "Lower the learning rate" in record and "a second seed is not a result" in record
    result = invoke(lab, "new", "0.1.3", "--from-proposal", "0.1.2", "--no-launch")
    assert result.exit_code == 0, result.output
    cfg = (lab.run_dir("0.1.3") / "config.yaml").read_text()
    assert "learning_rate: 0.0003" in cfg and "dropout: 0.1" in cfg
    plan = json.loads((lab.run_dir("0.1.3") / "plan.json").read_text())
    assert plan["goal"] == "Lower the learning rate" and plan["expect"] == "inference_loss < base"


def test_an_invalid_model_proposal_falls_back_to_the_rules(trained, server):
    """An unknown key in the next experiment, an invented number in the lesson: refused, repaired once,
    then dropped; the rules propose, and the reason is in the call log and the record."""
    lab, env = trained
    bad = {**GOOD_ANALYSIS, "lesson": {"text": "Seeds matter.", "evidence": ["inference loss 0.0123"]},
           "next_experiment": {"goal": "Bogus", "hypothesis": "A bogus knob lowers inference loss",
                               "sets": {"model.bogus_knob": 3}, "why": "because"}}
    server.reply_tool("write_analysis", bad)
    server.reply_tool("write_analysis", bad)
    _commit_reply(server)
    result = invoke(lab, "analyse", "0.1.2", env=env)
    assert result.exit_code == 0, result.output
    nxt = json.loads((lab.run_dir("0.1.2") / "next.json").read_text())
    assert nxt["proposed_by"] == "rules" and nxt["goal"] != "Bogus" and all("bogus" not in s for s in nxt["sets"])
    lesson = json.loads((lab.run_dir("0.1.2") / "lesson.json").read_text())
    assert lesson["proposed_by"] == "rules" and "0.0123" not in lesson["evidence"]
    calls = [c for c in calllog.read_calls(lab.run_dir("0.1.2") / "agent") if c["step"] == "analyse"][-2:]
    assert any("model.bogus_knob: unknown config key" in e for e in calls[0]["validation_errors"])
    assert any("0.0123" in e for e in calls[0]["validation_errors"])
    assert any("model.bogus_knob: unknown config key" in n for n in calls[1]["notes"])
    analysis = json.loads((lab.run_dir("0.1.2") / "analysis.json").read_text())
    assert any("rules propose instead" in n for n in analysis["notes"])
    assert "rules propose instead" in lab.record_path("0.1.2").read_text()


def test_a_proposal_that_fails_whole_config_validation_falls_back(trained, server):
    """Each value passes alone, the config they make does not (dim not divisible by n_heads): rules, reason kept."""
    lab, env = trained
    server.reply_tool("write_analysis", {**GOOD_ANALYSIS, "next_experiment": {
        "goal": "Odd width", "hypothesis": "An odd width lowers inference loss", "sets": {"model.dim": 33},
        "why": "to see"}})
    _commit_reply(server)
    result = invoke(lab, "analyse", "0.1.2", env=env)
    assert result.exit_code == 0, result.output
    nxt = json.loads((lab.run_dir("0.1.2") / "next.json").read_text())
    assert nxt["proposed_by"] == "rules" and "claude agent's next experiment was not used" in nxt["fallback_reason"]
    analysis = json.loads((lab.run_dir("0.1.2") / "analysis.json").read_text())
    assert nxt["fallback_reason"] in analysis["notes"]


def test_after_analyse_review_and_commit_work(trained, server):
    lab, env = trained
    server.reply_tool("write_analysis", GOOD_ANALYSIS)
    server.reply_tool("draft_commit", {"title": "Another seed", "improvements": ["seed 9"], "core_changes": {},
                                       "next_steps": ["Keep the base."]})
    before = len(server.requests)
    assert invoke(lab, "analyse", "0.1.2", env=env).exit_code == 0
    prompt = server.requests[before]["body"]["messages"][0]["content"]
    if os.environ.get("MINIMIND_DOC_PROMPT"):  # docs/AGENT.md quotes this prompt
        Path(os.environ["MINIMIND_DOC_PROMPT"]).write_text(prompt, encoding="utf-8")
    # the analyst sees the experiment: plan, diff, curves, guardrail history, samples, intervals, fixed settings
    for part in ("## The plan", "Repeat the baseline with another seed", "## Curves", '"loss"', "## Guardrail history",
                 "## Samples", '"repetition"', "interval of the delta", "held_out_control", "## Fixed settings",
                 '"data.split_seed"', "Language of the record: English"):
        assert part in prompt, part
    assert "per_item" not in prompt and "checkpoints/" not in prompt and '"model_config"' not in prompt
    # numbers rounded to 4 significant digits: no 5th significant digit anywhere
    assert not re.search(r"(?<![\d.])(?:[1-9]\d{0,3}\.\d{5,}|[1-9]\d{4,}\.\d|0\.0*[1-9]\d{4,})", prompt)
    result = invoke(lab, "review", "0.1.2", "--approve")
    assert result.exit_code == 0, result.output
    result = invoke(lab, "commit", "0.1.2")
    assert result.exit_code == 0, result.output
    title = subprocess.run(["git", "log", "-1", "--format=%s"], cwd=lab.root, capture_output=True, text=True).stdout
    assert title.strip() == "Experiment 0.1.2: Another seed (hypothesis refuted)"


def test_offline_analyse_redoes_only_the_analysis(trained):
    lab, _ = trained
    eval_before = (lab.run_dir("0.1.1") / "eval.json").read_bytes()
    result = invoke(lab, "analyse", "0.1.1", "--agent", "offline")
    assert result.exit_code == 0, result.output
    assert (lab.run_dir("0.1.1") / "eval.json").read_bytes() == eval_before
    assert "record experiment/experiment_0.1.1.md" in result.output
    assert json.loads((lab.run_dir("0.1.1") / "next.json").read_text())["proposed_by"] == "rules"  # offline: the rules
    assert invoke(lab, "analyse", "9.9.9").exit_code == 1


@pytest.mark.parametrize("error", [RuntimeError("the agent broke"), KeyError("verdict")], ids=["RuntimeError", "KeyError"])
def test_an_unexpected_exception_in_analysis_leaves_the_trained_run_finished(trained, monkeypatch, error):
    """Not only MinimindError: any exception after training is analysis_failed, with the traceback
    in runs/V/analysis_error.log, and `minimind analyse V` redoes it."""
    from agent.offline import OfflineAgent
    from lifecycle.running import pipeline

    lab, _ = trained
    run = lab.run_dir("0.1.1")
    (run / "analysis_error.log").unlink(missing_ok=True)

    def broken(self, ctx):
        raise error

    with monkeypatch.context() as patch:
        patch.setattr(OfflineAgent, "analyse", broken)
        assert pipeline._analyse(run) == 0  # the pipeline's analysis step, as the run calls it
        state = json.loads((run / "state.json").read_text())
        assert state["train_outcome"] == "finished" and state["analysis_failed"] and type(error).__name__ in state["analysis_error"]
        assert "runs/0.1.1/analysis_error.log" in state["analysis_error"]
        log = (run / "analysis_error.log").read_text()
        assert "Traceback (most recent call last)" in log and "in broken" in log and f"{type(error).__name__}: " in log
        (status,) = [s for s in json.loads(invoke(lab, "status", "--json").output) if s["version"] == "0.1.1"]
        assert status["state"] == "finished" and status["analysis_failed"]
        # the verb itself: one line, exit 1, the flag and the log
        result = invoke(lab, "analyse", "0.1.1", "--agent", "offline")
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
        assert "analysis_error.log" in result.output
        # eval re-analyses too, behind the same guard: eval.json is kept, the run stays finished
        (run / "analysis_error.log").unlink()
        result = invoke(lab, "eval", "0.1.1")
        assert result.exit_code == 1 and "but the analysis failed" in result.output, result.output
        assert "minimind analyse 0.1.1" in result.output and (run / "analysis_error.log").exists()
        state = json.loads((run / "state.json").read_text())
        assert state["train_outcome"] == "finished" and state["analysis_failed"]
    result = invoke(lab, "analyse", "0.1.1", "--agent", "offline")
    assert result.exit_code == 0, result.output
    (status,) = [s for s in json.loads(invoke(lab, "status", "--json").output) if s["version"] == "0.1.1"]
    assert status["state"] == "finished" and status["analysed"] and not status["analysis_failed"]
