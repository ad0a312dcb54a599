"""Rejecting the agent's waiting code change with a note (`new V ... --reject-code NOTE`): the
note is one more agent round over the kept candidate, the revision passes the gate again and
waits for approval again, the living model file is untouched until approval, and the round
and the note are in code_change.json and the record. Fake Messages API, no network."""

from __future__ import annotations

import json

import pytest

import code_candidates as cc
from agent import editor
from lab_helpers import invoke, make_lab

API_KEY = "sk-ant-code-reject-test-0123456789-SECRET"
ED = editor.TOOL["name"]
PLAN = {"thinking": "A learnable gate lets the model weigh the memory read.",
        "changes": {"model.preset": "memory", "model.memory_gate": True},
        "rationale": {"model.preset": "the gate needs a memory layer", "model.memory_gate": "switch the gate on"},
        "expected": "The gate settles where the memory read helps.", "risks": ["the gate closes"],
        "code_change": cc.GATE_CHANGE}
GOAL = ["--goal", "Gate the memory read", "--hypothesis", "a learnable gate helps"]
NOTE = "start the gate open: initialise it at 1, not 0"
# the revision: an edit only the rejected candidate can take (its gate line), so it proves where the scratch starts
OPEN = ("nn.Parameter(torch.zeros(())) if spec.memory and config.memory_gate",
        "nn.Parameter(torch.ones(())) if spec.memory and config.memory_gate")


@pytest.fixture
def lab(tmp_path, bundled_data):
    return make_lab(tmp_path / "lab", bundled_data, steps=6)


@pytest.fixture(autouse=True)
def _claude_env(fake, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)


def _edit(old, new):
    return (ED, {"command": "str_replace", "path": editor.PATH, "old_str": old, "new_str": new})


def _first_candidate(lab, fake):
    """The agent writes the gate (three edits); it waits for approval in runs/.pending/0.1.0."""
    fake.reply_tool("propose_plan", PLAN)
    fake.reply_tools(*[_edit(o, n) for o, n in cc.GATE])
    fake.reply_tools(("submit_change", {"reasons": [
        {"edit": 1, "reason": "a new setting whose default keeps today's forward"},
        {"edit": 2, "reason": "the gate parameter, only when the setting is on"},
        {"edit": 3, "reason": "scale the memory output by the gate"}]}))
    refused = invoke(lab, "new", "0.1.0", *GOAL, "--agent", "claude")
    assert refused.exit_code == 3 and "--reject-code NOTE" in refused.output, refused.output
    return _pending(lab)


def _pending(lab):
    return json.loads((lab.runs_dir / ".pending" / "0.1.0" / "code_change.json").read_text())


def test_a_rejection_is_one_more_agent_round_and_waits_for_approval_again(lab, fake):
    living = (lab.models_dir / "model.py").read_bytes()
    first = _first_candidate(lab, fake)
    status = invoke(lab, "status").output
    assert f"0.1.0: drafted, its code change (the agent, sha256 {first['sha256'][:12]})" in status, status

    # what cannot reject, refused before anything is asked, the candidate kept as it was (exit 2)
    for extra, says in ((["--agent", "offline"], "the offline backend cannot revise code"),
                        (["--approve-code", first["sha256"][:12]], "cannot be combined"),
                        (["--agent", "claude", "--patch", "x.diff"], "a --patch is yours")):
        result = invoke(lab, "new", "0.1.0", *GOAL, *extra, "--reject-code", NOTE)
        assert result.exit_code == 2 and says in result.output, result.output
    assert invoke(lab, "new", "0.1.0", *GOAL, "--agent", "claude", "--reject-code", "  ").exit_code == 2
    nothing = invoke(lab, "new", "0.1.1", *GOAL, "--agent", "claude", "--reject-code", NOTE)
    assert nothing.exit_code == 2 and "nothing to reject" in nothing.output
    assert _pending(lab) == first and len(fake.requests) == 3

    fake.reply_tool("propose_plan", PLAN)  # the plan is asked again, then one revision round
    fake.reply_tools(_edit(*OPEN))
    fake.reply_tools(("submit_change", {"reasons": [{"edit": 1, "reason": "the gate starts open, as the note asks"}]}))
    again = invoke(lab, "new", "0.1.0", *GOAL, "--agent", "claude", "--reject-code", NOTE)
    assert again.exit_code == 3 and "needs your approval" in again.output, again.output
    assert f"you rejected candidate {first['sha256'][:12]} with the note: {NOTE}" in again.output
    prompt = fake.requests[4]["body"]["messages"][0]["content"]
    assert NOTE in prompt.split("<untrusted_human_text>")[2] and "+        self.memory_gate = nn.Parameter" in prompt
    assert (lab.models_dir / "model.py").read_bytes() == living and not lab.run_dir("0.1.0").exists()

    second = _pending(lab)
    assert second["sha256"] != first["sha256"]
    assert [(r["round"], r.get("kind")) for r in second["rounds"]] == [(1, None), (2, "rejection"), (3, None)]
    assert second["rounds"][1]["note"] == NOTE and second["rounds"][1]["rejected_sha256"] == first["sha256"]
    gate_hunk = next(h for h in second["hunks"] if "torch.ones(())" in h["hunk"])
    assert gate_hunk["reasons"] == ["the gate parameter, only when the setting is on",
                                    "the gate starts open, as the note asks"]  # the earlier reason stays with its lines
    assert all(s["status"] == "passed" for s in second["stages"]) and second["isolation"]
    assert "revised after 1 rejection(s)" in invoke(lab, "status").output

    fake.reply_tool("propose_plan", PLAN)  # approved later: the revision is used as kept, nothing rewritten
    done = invoke(lab, "new", "0.1.0", *GOAL, "--agent", "claude", "--no-launch", "--approve-code", second["sha256"][:12])
    assert done.exit_code == 0, done.output
    record = json.loads((lab.run_dir("0.1.0") / "code_change.json").read_text())
    assert record["rounds"][1]["note"] == NOTE and record["approval"]["sha256"] == second["sha256"]
    assert "torch.ones(())" in (lab.models_dir / "model.py").read_text(encoding="utf-8")
    md = lab.record_path("0.1.0").read_text(encoding="utf-8")
    assert f'with the note "{NOTE}"; the agent revised it' in md and "2 rounds" in md


def test_a_revision_that_gives_up_keeps_the_candidate_and_the_lab(lab, fake):
    living = (lab.models_dir / "model.py").read_bytes()
    first = _first_candidate(lab, fake)
    fake.reply_tool("propose_plan", PLAN)
    for _ in range(2):  # submits the rejected file unchanged, twice: the same error repeats and the step stops
        fake.reply_tools(("submit_change", {"reasons": []}))
    result = invoke(lab, "new", "0.1.0", *GOAL, "--agent", "claude", "--reject-code", NOTE)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "still the candidate the human rejected" in result.output and "still waits for approval" in result.output
    assert _pending(lab) == first and (lab.models_dir / "model.py").read_bytes() == living
    assert not lab.run_dir("0.1.0").exists()
    kept = sorted((lab.runs_dir / ".failed").glob("0.1.0-*/agent/implement_rounds.json"))  # each attempt its own
    assert sorted([r["round"] for r in json.loads(p.read_text())["rounds"]] for p in kept) == [[1], [3, 4]]
    dropped = invoke(lab, "discard", "0.1.0")  # the human can also drop the waiting candidate
    assert dropped.exit_code == 0 and "removed runs/.pending/0.1.0" in dropped.output, dropped.output
    assert not (lab.runs_dir / ".pending" / "0.1.0").exists() and (lab.models_dir / "model.py").read_bytes() == living


def test_an_implement_step_that_gives_up_is_one_line_and_keeps_its_rounds(lab, fake):
    """Loop bounds through `new`: four failing submissions end after three repairs, with a one-line
    error (exit 1), the living file byte-identical and the failed rounds kept in runs/.failed/."""
    living = (lab.models_dir / "model.py").read_bytes()
    fake.reply_tool("propose_plan", PLAN)
    anchor, previous = "        h = x + h_attn\n", "        h = x + h_attn\n"
    for i in range(1, 5):  # each round a new undefined name in Block.forward: lint fails, never the same error
        new = anchor + f"        h = h + 0 * scale_{i}\n"
        fake.reply_tools(_edit(previous, new))
        fake.reply_tools(("submit_change", {"reasons": [{"edit": n, "reason": "scale"} for n in range(1, i + 1)]}))
        previous = new
    result = invoke(lab, "new", "0.1.0", *GOAL, "--agent", "claude")
    assert result.exit_code == 1 and "3 repair rounds did not pass the gate" in result.output, result.output
    assert (lab.models_dir / "model.py").read_bytes() == living and not lab.run_dir("0.1.0").exists()
    assert not (lab.runs_dir / ".pending" / "0.1.0").exists()
    kept = list((lab.runs_dir / ".failed").glob("0.1.0-*/agent/implement_rounds.json"))
    assert [r["round"] for r in json.loads(kept[0].read_text())["rounds"]] == [1, 2, 3, 4]
