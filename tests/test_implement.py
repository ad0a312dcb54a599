"""The claude implement step: the text editor tool over a scratch copy, submit_change, the
code gate as validator, bounded repair rounds. The real SDK against the fake Messages API."""

from __future__ import annotations

import json

import pytest

import code_candidates as cc
from agent import editor
from agent.base import AgentError
from agent.claude import ClaudeAgent
from agent.implement import ROUNDS_FILE, ImplementContext, implement
from lifecycle.code import codegate
from lifecycle.code.codegate import CodeChange
from minimind.settings import AgentSettings

API_KEY = "sk-ant-implement-test-0123456789-SECRET"
ED = editor.TOOL["name"]
PATH = editor.PATH


@pytest.fixture
def agent(fake, tmp_path):
    settings = AgentSettings(model="claude-sonnet-4-6", max_retries=0, timeout_s=20.0, max_usd=5.0)
    return ClaudeAgent(settings, tmp_path / "agent", api_key=API_KEY, base_url=fake.url)


@pytest.fixture(scope="module")
def base_model():
    from models.model import ModelConfig

    return ModelConfig(knowledge_num=1024).to_dict()


def _context(change=cc.GATE_CHANGE):
    return ImplementContext(version="9.9.9", goal="gate the memory read", hypothesis="a gate helps",
                            code_change=change, base_text=cc.base(), lessons="- the memory query is h_attn")


def _validator(base_model, change=cc.GATE_CHANGE, sets=None):
    def validate(text, reasons):
        report = codegate.validate(cc.base(), text, change=CodeChange.from_dict(change), reasons=reasons,
                                   base_model=base_model, model_sets={"memory_gate": True} if sets is None else sets)
        return report.ok, report.refusal(), report
    return validate


def _edits(pairs):
    return [(ED, {"command": "str_replace", "path": PATH, "old_str": old, "new_str": new}) for old, new in pairs]


def _reasons(n, why="gate the memory output"):
    return ("submit_change", {"reasons": [{"edit": i, "reason": f"{why} ({i})"} for i in range(1, n + 1)]})


def test_happy_path_view_two_edits_submit(agent, fake, base_model):
    fake.reply_tools((ED, {"command": "view", "path": PATH, "view_range": [420, 460]}))
    fake.reply_tools(*_edits([cc.GATE[0]]), text="Adding the setting first.")
    fake.reply_tools(*_edits(cc.GATE[1:]))
    fake.reply_tools(_reasons(3))
    result = implement(agent, _context(), _validator(base_model))
    assert result.text == cc.apply(cc.base(), cc.GATE) and result.report.ok
    assert [e["edit"] for e in result.edits] == [1, 2, 3] and all(e["reason"] for e in result.edits)
    assert all(h["reasons"] for h in result.report.hunks)
    body = fake.requests[0]["body"]
    assert body["tool_choice"] == {"type": "auto"}
    assert body["tools"][0] == {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}
    (view,) = fake.tool_results(1)
    assert "   420\t" in view["content"] and not view.get("is_error")
    done = fake.tool_results(3)  # two edits in one reply: two results, each with its numbered snippet
    assert len(done) == 2 and all("applied" in r["content"] and "\t" in r["content"] for r in done)
    log = [json.loads(line) for line in (agent.log_dir / "calls.jsonl").read_text().splitlines()]
    assert [c["step"] for c in log] == ["implement"] * 4
    assert API_KEY not in (agent.log_dir / "calls.jsonl").read_text()


def test_broken_causality_goes_back_and_the_repair_passes(agent, fake, base_model):
    change = {**cc.GATE_CHANGE, "touches": ["Attention.forward", "Block.__init__", "Block.forward"]}
    fake.reply_tools(*_edits(cc.GATE + cc.LEAK))
    fake.reply_tools(_reasons(5))
    fake.reply_tools(*_edits([(new, old) for old, new in cc.LEAK]))
    fake.reply_tools(_reasons(7, "restore the causal mask"))
    result = implement(agent, _context(change), _validator(base_model, change))
    refused = fake.tool_results(2)[0]
    assert refused["is_error"] and "causality" in refused["content"] and "sees the future" in refused["content"]
    assert "Position t never sees tokens after t" in refused["content"]  # the lesson
    assert result.text == cc.apply(cc.base(), cc.GATE) and len(result.rounds) == 2


def test_unusable_edits_get_specific_errors_and_change_nothing(agent, fake, base_model):
    calls = [
        (ED, {"command": "str_replace", "path": PATH, "old_str": "def forward(self, input_ids, past_key_values=NONE",
              "new_str": "x"}),
        (ED, {"command": "str_replace", "path": PATH, "old_str": "        super().__init__()\n", "new_str": "        pass\n"}),
        (ED, {"command": "str_replace", "path": PATH, "old_str": "PAD_ID = 0", "new_str": "PAD_ID = 0"}),
        (ED, {"command": "str_replace", "path": "/lab/training/train.py", "old_str": "a", "new_str": "b"}),
        (ED, {"command": "str_replace", "path": "/lab/models/../models/model.py", "old_str": "a", "new_str": "b"}),
        (ED, {"command": "create", "path": PATH, "file_text": "import os\n"}),
        (ED, {"command": "undo_edit", "path": PATH}),
    ]
    fake.reply_tools(*calls)
    fake.reply_tools(_reasons(0))
    fake.reply_tools(_reasons(0))
    with pytest.raises(AgentError, match="repeated the previous error"):
        implement(agent, _context(), _validator(base_model))
    results = fake.tool_results(1)
    assert all(r.get("is_error") for r in results)
    nomatch, ambiguous, noop, other, dotdot, create, undo = (r["content"] for r in results)
    assert "was not found" in nomatch and "closest region" in nomatch and "def forward(self, input_ids" in nomatch
    lines = [i for i, t in enumerate(cc.base().splitlines(keepends=True), 1) if t == "        super().__init__()\n"]
    assert f"occurs {len(lines)} times, starting at lines {', '.join(map(str, lines))}" in ambiguous
    assert "identical" in noop and "only /lab/models/model.py" in other and "only /lab/models/model.py" in dotdot
    assert "'create' is not served" in create and "'undo_edit' is not served" in undo
    empty = fake.tool_results(2)[0]
    assert empty["is_error"] and "empty" in empty["content"]


def test_a_multiline_ambiguous_match_lists_every_start_line():
    text = "a\nb\nc\na\nb\nd\n"
    scratch = editor.ScratchEditor(text)
    message, is_error = scratch.handle({"command": "str_replace", "path": PATH, "old_str": "a\nb\n", "new_str": "x\n"})
    assert is_error and "starting at lines 1, 4" in message and scratch.text == text
    tabs = editor.ScratchEditor("\tx = 1\r\n\ty = 2\r\n")
    _, is_error = tabs.handle({"command": "str_replace", "path": PATH, "old_str": "\ty = 2", "new_str": "\ty = 3"})
    assert not is_error and tabs.text == "\tx = 1\r\n\ty = 3\r\n"  # tabs and CRLF kept
    inserted = editor.ScratchEditor("a\nb\n")
    assert not inserted.handle({"command": "insert", "path": PATH, "insert_line": 1, "insert_text": "z"})[1]
    assert not inserted.handle({"command": "insert", "path": PATH, "insert_line": 0, "new_str": "y\n"})[1]
    assert inserted.text == "y\na\nz\nb\n"


def test_loop_bounds_four_failing_submissions_end_after_three_repairs(agent, fake, base_model, tmp_path):
    living = cc.MODEL.read_bytes()
    anchor = "        h = x + h_attn\n"
    previous = anchor
    for i in range(1, 5):  # each round fails differently: a new undefined name in Block.forward
        new = anchor + f"        h = h + 0 * scale_{i}\n"
        fake.reply_tools(*_edits([(previous, new)]))
        fake.reply_tools(_reasons(i, "scale the residual"))
        previous = new
    with pytest.raises(AgentError, match="3 repair rounds did not pass the gate"):
        implement(agent, _context(), _validator(base_model))
    assert len(fake.requests) == 8
    rounds = json.loads((agent.log_dir / ROUNDS_FILE).read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4] and not any(r["ok"] for r in rounds)
    assert cc.MODEL.read_bytes() == living


def test_the_step_stops_when_the_same_candidate_comes_back(agent, fake, base_model):
    fake.reply_tools(*_edits([("PAD_ID = 0  #", "PAD_ID = 1  #")]))
    fake.reply_tools(_reasons(1))
    fake.reply_tools(("submit_change", {"reasons": [{"edit": 1, "reason": "other words, same file"}]}))
    with pytest.raises(AgentError, match="same file as round 1|repeated the previous error"):
        implement(agent, _context(), _validator(base_model))
    assert len(fake.requests) == 3


def test_a_secret_in_the_candidate_s_exception_reaches_no_tool_result(agent, fake, base_model, monkeypatch):
    """The candidate reads the API key from its environment and raises it. The policy refuses
    `torch.os`; here the validator is the child alone, as if the policy had missed it."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    leak = cc.in_forward('raise RuntimeError("key=" + torch.os.environ.get("ANTHROPIC_API_KEY", "absent"))')
    fake.reply_tools(*_edits(leak))
    fake.reply_tools(_reasons(1))
    fake.reply_tools(*_edits([(leak[0][1], leak[0][0])]))
    fake.reply_tools(_reasons(2, "remove the raise"))

    def child_only(text, reasons):
        child = codegate.run_checks_in_child(cc.base(), text, base_model, {}, None, changes_default=False)
        bad = next((s for s in child["stages"] if s["status"] == "failed"), None)
        return bad is None or bad["stage"] != "checks", f"stage {bad['stage']} failed: {bad['detail']}" if bad else "", None

    implement(agent, _context(), child_only)  # round 2 removes the raise: the checks pass
    refused = fake.tool_results(2)[0]
    assert refused["is_error"] and "key=absent" in refused["content"]
    for request in fake.requests:
        assert API_KEY not in request["raw"]
    for path in agent.log_dir.iterdir():
        assert API_KEY not in path.read_text(encoding="utf-8"), path
