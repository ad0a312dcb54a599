"""The agent's refused text never reaches the record (issue 19), against the fake Messages API:

- a note that explains a refused field names the field and the reason; it does not repeat
  the claim, its ✅ or its invented number;
- the plan's prose (thinking, expected, risks) gets the analysis's checks and its one
  repair: before training there is no verdict to claim, and a metric's number must come
  from the data the plan was given.
"""

from __future__ import annotations

import json

from agent import calllog
from test_claude_agent import agent_for, plan_context, refuted_context  # noqa: F401 -- fixtures and contexts

CLAIM = "The hypothesis is strongly supported. ✅ hypothesis supported: inference_loss 0.0123"
UNDER = [{"kind": "under_trained", "names": ["under-trained"], "train_loss": 8.27, "uniform_loss": 8.76}]


def _quotes_the_claim(text: str) -> bool:
    return any(part in text for part in ("strongly supported", "✅", "0.0123"))


def test_refusal_notes_name_the_field_and_the_reason_not_the_claim(fake, agent_for):  # noqa: F811
    liar = {name: CLAIM for name in ("training_results", "inference_evaluation", "deep_analysis", "conclusion")}
    liar["next_steps"] = [CLAIM]
    liar["lesson"] = {"text": CLAIM, "evidence": [CLAIM]}
    liar["next_experiment"] = {"goal": CLAIM, "hypothesis": CLAIM, "sets": {"model.freeze_policy": CLAIM},
                               "expect": CLAIM, "why": CLAIM}
    fake.reply_tool("write_analysis", liar)
    fake.reply_tool("write_analysis", liar)
    analysis = agent_for().analyse(refuted_context(causes=UNDER))
    # the repair round tells the model precisely what was wrong ...
    repair = json.dumps(fake.requests[1]["body"]["messages"][-1], ensure_ascii=False)
    assert "computed verdict is refuted" in repair and "0.0123" in repair
    # ... the record's notes say which field and why, and never repeat the refused text
    assert analysis.notes
    for note in analysis.notes:
        assert not _quotes_the_claim(note), note
    joined = " ".join(analysis.notes)
    assert "conclusion: asserts a verdict other than the computed one (refuted)" in joined
    assert "quotes a number that is not in the data given" in joined
    assert "next_experiment.sets.model.freeze_policy" in joined and "lesson.text" in joined
    assert analysis.lesson is None and analysis.next_experiment is None
    for field in ("training_results", "inference_evaluation", "deep_analysis", "conclusion"):
        assert not _quotes_the_claim(getattr(analysis, field))


PLAN = {"thinking": "The base reached val loss 3.0; a larger batch should lower the loss noise. A freeze "
                    "ratio of 0.3 keeps more entries stable, as 1.4.3's inference loss 29.34 warns.",
        "changes": {"train.batch_size": 64, "model.freeze_ratio": 0.3},
        "rationale": {"train.batch_size": "less gradient noise"},
        "expected": "If the hypothesis holds, the val loss stays near 3.0 with a smoother curve.",
        "risks": ["fewer optimizer steps per epoch"]}


def test_a_truthful_plan_passes_without_repair(fake, agent_for):  # noqa: F811
    fake.reply_tool("propose_plan", PLAN)
    plan = agent_for().plan(plan_context())
    assert len(fake.requests) == 1 and plan.thinking == PLAN["thinking"] and plan.expected == PLAN["expected"]
    assert plan.notes == []


def test_a_plan_that_claims_a_verdict_is_repaired_once_then_replaced(fake, agent_for, tmp_path):  # noqa: F811
    liar = PLAN | {"thinking": CLAIM, "expected": "Inference loss 0.0123, far below the base.", "risks": [CLAIM]}
    fake.reply_tool("propose_plan", liar)
    fake.reply_tool("propose_plan", liar)
    plan = agent_for().plan(plan_context())
    assert len(fake.requests) == 2
    repair = json.dumps(fake.requests[1]["body"]["messages"][-1], ensure_ascii=False)
    assert "before training" in repair and "0.0123" in repair
    for text in (plan.thinking, plan.expected, *plan.risks):
        assert not _quotes_the_claim(text), text
    assert plan.changes == {"train.batch_size": 64, "model.freeze_ratio": 0.3}  # the valid changes are kept
    assert plan.notes == [] and plan.replaced and not any(_quotes_the_claim(n) for n in plan.replaced)
    joined = " ".join(plan.replaced)
    assert "thinking: asserts a verdict before training" in joined and "expected: quotes a number" in joined
    assert "risks" in joined
    log = calllog.read_calls(tmp_path / "agent")
    assert log[-1]["notes"] == plan.replaced


def test_a_plan_repaired_in_the_second_round_is_kept(fake, agent_for):  # noqa: F811
    fake.reply_tool("propose_plan", PLAN | {"expected": "✅ Inference loss will fall to 0.0123."})
    fake.reply_tool("propose_plan", PLAN)
    plan = agent_for().plan(plan_context())
    assert plan.expected == PLAN["expected"] and plan.notes == [] and plan.replaced == []
    repair = json.dumps(fake.requests[1]["body"]["messages"][-1], ensure_ascii=False)
    assert "expected: uses a result mark (✅/❌) before training" in repair


def test_the_record_carries_neither_the_refused_plan_nor_the_refused_analysis(fake, tmp_path, bundled_data):
    """End to end in a lab: `new --agent claude` with a plan that claims success, then `analyse`
    with an analysis that does, on a refuted run. The record's thinking is minimimd's text
    with a note, and the analysis notes name fields and reasons only."""
    from lab_helpers import invoke, make_lab
    from test_analysis_products import finish

    lab = make_lab(tmp_path / "lab", bundled_data)
    env = {"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": fake.url}
    liar_plan = PLAN | {"changes": {}, "rationale": {}, "thinking": CLAIM, "expected": CLAIM, "risks": [CLAIM]}
    fake.reply_tool("propose_plan", liar_plan)
    fake.reply_tool("propose_plan", liar_plan)
    result = invoke(lab, "new", "0.1.0", "--goal", "Baseline", "--hypothesis", "A dense model learns the facts",
                    "--expect", "inference_loss < 1", "--agent", "claude", "--no-launch", env=env)
    assert result.exit_code == 0, result.output
    record = lab.record_path("0.1.0").read_text()
    assert "strongly supported" not in record and "0.0123" not in record
    thinking = record.split("## ", 2)[1].split("| `", 1)[0]  # the section up to the preflight table
    assert "✅" not in thinking and "Starting point:" in thinking  # minimind's text from the data
    assert "claimed a verdict before training" in thinking
    assert "(thinking: asserts a verdict before training; thinking: uses a result mark" in thinking
    finish(lab.run_dir("0.1.0"))
    liar = {name: CLAIM for name in ("training_results", "inference_evaluation", "deep_analysis", "conclusion")}
    liar |= {"next_steps": [CLAIM], "lesson": None, "next_experiment": {"goal": CLAIM, "hypothesis": CLAIM,
                                                                        "sets": {}, "expect": CLAIM, "why": CLAIM}}
    for _ in range(2):
        fake.reply_tool("write_analysis", liar)
    for _ in range(2):
        fake.reply_tool("draft_commit", {"title": "Baseline", "improvements": [CLAIM], "core_changes": {},
                                         "next_steps": [CLAIM]})
    result = invoke(lab, "analyse", "0.1.0", env=env)
    assert result.exit_code == 0, result.output
    record = lab.record_path("0.1.0").read_text()
    assert "strongly supported" not in record and "0.0123" not in record
    assert "asserts a verdict other than the computed one (refuted)" in record


def test_the_models_lesson_must_name_the_cause_the_data_supports(fake, agent_for):  # noqa: F811
    """Under-trained run: a lesson blaming something else is refused, repaired once, then dropped."""
    good = {"training_results": "Training finished.", "inference_evaluation": "Evaluated.",
            "deep_analysis": "See the table.", "conclusion": "Refuted, see the verdict.", "next_steps": ["Train longer."]}
    blame = good | {"lesson": {"text": "eval.chat_probes caused the failure.", "evidence": ["inference loss 2.139"]}}
    fake.reply_tool("write_analysis", blame)
    fake.reply_tool("write_analysis", good | {"lesson": {"text": "The run is under-trained at 10 steps.",
                                                         "evidence": ["inference loss 2.139"]}})
    analysis = agent_for().analyse(refuted_context(causes=UNDER))
    repair = json.dumps(fake.requests[1]["body"]["messages"][-1], ensure_ascii=False)
    assert "does not name the cause the data supports" in repair
    assert analysis.lesson == {"text": "The run is under-trained at 10 steps.", "evidence": ["inference loss 2.139"]}
    prompt = fake.requests[0]["body"]["messages"][0]["content"]
    assert "the run is under-trained (train loss 8.27" in prompt


def test_no_cause_no_lesson_from_the_model(fake, agent_for):  # noqa: F811
    good = {"training_results": "Training finished.", "inference_evaluation": "Evaluated.",
            "deep_analysis": "See the table.", "conclusion": "Refuted, see the verdict.", "next_steps": ["Revert."]}
    fake.reply_tool("write_analysis", good | {"lesson": {"text": "Seeds matter.", "evidence": ["inference loss 2.139"]}})
    fake.reply_tool("write_analysis", good | {"lesson": None})
    analysis = agent_for().analyse(refuted_context())
    assert "give `lesson` null" in fake.requests[0]["body"]["messages"][0]["content"]
    assert "supports no cause" in json.dumps(fake.requests[1]["body"]["messages"][-1])
    assert analysis.lesson is None and analysis.notes == []
