"""The lab remembers: lessons proposed after a run whose data supports a cause (this 12-step run is
under-trained) and accepted into LESSONS.md with `review --approve --accept-lesson`, the
notebook (INDEX.md, history), reviewer notes kept across re-renders, next-experiment proposals."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from lab_helpers import invoke, make_lab, wait_state

PLAN = {"thinking": "Following the lab's lessons, this run repeats the base with another seed to tell noise from effect.",
        "changes": {}, "rationale": {}, "expected": "inference loss similar to the base", "risks": ["noise"]}


@pytest.fixture(scope="module")
def refuted(tmp_path_factory, bundled):
    """A lab whose first experiment ran and was refuted (it expects an inference loss no 12-step model reaches)."""
    lab = make_lab(tmp_path_factory.mktemp("notebook") / "lab", bundled)
    result = invoke(lab, "new", "0.1.0", "--goal", "baseline", "--hypothesis", "the dense model learns the facts",
                    "--expect", "inference_loss < 0.5")
    assert result.exit_code == 0, result.output
    assert wait_state(lab, "0.1.0") == "finished"
    return lab


def test_a_refuted_run_proposes_a_lesson_that_review_approves_into_the_file(refuted, fake):
    lab = refuted
    lesson = json.loads((lab.run_dir("0.1.0") / "lesson.json").read_text())
    assert lesson["status"] == "proposed" and "verdict refuted" in lesson["evidence"] and "7." in lesson["evidence"]
    record = lab.record_path("0.1.0").read_text()
    assert "**Proposed lesson** (proposed" in record and lesson["text"] in record
    lessons_before = (lab.experiment_dir / "LESSONS.md").read_text()
    assert "h_attn" in lessons_before and lesson["text"] not in lessons_before
    result = invoke(lab, "review", "0.1.0", "--approve")  # approving alone never accepts the lesson
    assert result.exit_code == 0 and "stays proposed" in result.output, result.output
    assert (lab.experiment_dir / "LESSONS.md").read_text() == lessons_before
    result = invoke(lab, "review", "0.1.0", "--approve", "--accept-lesson")
    assert result.exit_code == 0 and "Lesson accepted" in result.output, result.output
    assert lesson["text"] in (lab.experiment_dir / "LESSONS.md").read_text()
    assert json.loads((lab.run_dir("0.1.0") / "lesson.json").read_text())["status"] == "accepted"
    # the next plan's prompt carries it (claude backend against the fake API)
    fake.reply_tool("propose_plan", PLAN)
    env = {"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": fake.url}
    result = invoke(lab, "new", "0.1.1", "--from-proposal", "0.1.0", "--agent", "claude", "--no-launch", env=env)
    assert result.exit_code == 0, result.output
    prompt = fake.requests[0]["body"]["messages"][0]["content"]
    assert lesson["text"] in prompt and "never x + h_attn" in prompt
    assert "<notebook>" in prompt and "- 0.1.0 (base none): baseline" in prompt and "refuted" in prompt
    # --from-proposal: the config carries the proposal's --set values
    proposal = json.loads((lab.run_dir("0.1.0") / "next.json").read_text())
    plan = json.loads((lab.run_dir("0.1.1") / "plan.json").read_text())
    assert plan["goal"] == proposal["goal"] and plan["base"] == "0.1.0" and proposal["sets"]
    import yaml

    config = yaml.safe_load((lab.run_dir("0.1.1") / "config.yaml").read_text())
    for item in proposal["sets"]:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        assert config[section][name] == yaml.safe_load(value)


def test_history_index_and_reviewer_notes(refuted):
    lab = refuted
    result = invoke(lab, "history", "--json")
    rows = {r["version"]: r for r in json.loads(result.output)}
    assert rows["0.1.0"]["verdict"] == "refuted" and "misses" in rows["0.1.0"]["interval"]
    assert rows["0.1.0"]["recall"]["mem_only"]["ci"]
    text = invoke(lab, "history").output
    assert "0.1.0" in text and "refuted" in text
    index = (lab.experiment_dir / "INDEX.md").read_text()
    assert "| [0.1.0](experiment_0.1.0.md) |" in index and "refuted (inference_loss" in index
    # A reviewer's notes survive a re-render and reach the notebook.
    record = lab.record_path("0.1.0")
    record.write_text(record.read_text() + "## Reviewer notes\n\nThe 12-step budget is too small to learn the facts.\n")
    from lifecycle.document.record import write_record

    write_record(lab, "0.1.0", "en")
    assert "The 12-step budget is too small" in record.read_text()
    assert not (lab.run_dir("0.1.0") / "record.rendered.md").exists()
    from lifecycle.knowledge.notebook import trace

    assert "12-step budget" in trace(lab)
    # commit carries INDEX.md and LESSONS.md (the lesson accepted here unless the lesson test ran
    # first on this module's lab: the test does not depend on the order tests run in)
    from lifecycle.knowledge import lessons

    lessons.accept(lab, lab.run_dir("0.1.0"), "me")
    assert invoke(lab, "commit", "0.1.0", "--yes").exit_code == 0
    files = subprocess.run(["git", "show", "--name-only", "--format=", "HEAD"], cwd=lab.root, capture_output=True,
                           text=True).stdout.split()
    assert "experiment/INDEX.md" in files and "experiment/LESSONS.md" in files and "runs/0.1.0/next.json" in files


def test_reject_lesson_leaves_the_file_alone(tmp_path, bundled):
    from lifecycle.knowledge import lessons

    lab = make_lab(tmp_path / "lab", bundled)
    run_dir = lab.run_dir("9.9.9")
    run_dir.mkdir(parents=True)
    moved = [{"kind": "guardrail_moved", "names": ["train_loss"],
              "moves": [{"name": "train_loss", "from": "safe", "base_value": 1.2, "value": 0.01}]}]
    proposal = lessons.propose("9.9.9", {"hypothesis": "h"}, {"guardrails": {"train_loss": {"value": 0.01, "level": "danger"}}},
                               "inconclusive", "guardrail train_loss is in danger", [("train.learning_rate", 0.001, 0.01)],
                               causes=moved)
    assert "train_loss" in proposal["text"] and "train_loss = 0.01 (danger)" in proposal["evidence"]
    lessons.write_proposal(run_dir, proposal)
    before = (lab.experiment_dir / "LESSONS.md").read_text()
    assert lessons.reject(run_dir, "me") == proposal["text"]
    assert lessons.accept(lab, run_dir, "me") is None
    assert (lab.experiment_dir / "LESSONS.md").read_text() == before
    assert os.path.exists(run_dir / "lesson.json")
    assert lessons.propose("9.9.9", {}, {"guardrails": {}}, "supported", "ok", []) is None
    assert lessons.propose("9.9.9", {}, {"guardrails": {}}, "refuted", "missed", [("train.seed", 1, 2)], causes=[]) is None
