"""`minimind new --agent claude` with a plan that declares a code change: the implement step,
the gate, the approval (nothing launches without it), the run, the record. Fake Messages API."""

from __future__ import annotations

import json

import pytest

import code_candidates as cc
from agent import editor
from lab_helpers import make_lab, wait_state

API_KEY = "sk-ant-code-agent-test-0123456789-SECRET"
PLAN = {
    "thinking": "A learnable gate lets the model weigh the memory read.",
    "changes": {"model.preset": "memory", "model.memory_gate": True},
    "rationale": {"model.preset": "the gate needs a memory layer", "model.memory_gate": "switch the gate on"},
    "expected": "The gate settles where the memory read helps.",
    "risks": ["the gate closes"],
    "code_change": cc.GATE_CHANGE,
}
ED = editor.TOOL["name"]


@pytest.fixture
def lab(tmp_path, bundled_data):
    return make_lab(tmp_path / "lab", bundled_data, steps=6)


def _script(fake):
    fake.reply_tool("propose_plan", PLAN)
    fake.reply_tools((ED, {"command": "view", "path": editor.PATH, "view_range": [60, 120]}))
    fake.reply_tools(*[(ED, {"command": "str_replace", "path": editor.PATH, "old_str": o, "new_str": n})
                       for o, n in cc.GATE[:2]])
    fake.reply_tools((ED, {"command": "str_replace", "path": editor.PATH, "old_str": cc.GATE[2][0],
                           "new_str": cc.GATE[2][1]}))
    fake.reply_tools(("submit_change", {"reasons": [
        {"edit": 1, "reason": "a new setting whose default keeps today's forward"},
        {"edit": 2, "reason": "the gate parameter, only when the setting is on"},
        {"edit": 3, "reason": "scale the memory output by the gate"}]}))


@pytest.fixture(autouse=True)
def _claude_env(fake, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)


def _new(lab, fake, **extra):
    from lifecycle.new import NewRequest, create_experiment

    req = NewRequest(version="0.1.0", goal="Gate the memory read", hypothesis="a learnable gate helps",
                     agent="claude", **extra)
    return create_experiment(lab, req)


def test_the_agent_s_code_change_runs_only_after_approval(lab, fake):
    from minimind.errors import GateRefused

    living = (lab.models_dir / "model.py").read_bytes()
    _script(fake)
    with pytest.raises(GateRefused, match="needs your approval") as refused:
        _new(lab, fake, yes=True)  # --yes accepts compute, never code
    text = str(refused.value)
    assert "hunk 1" in text and "hunk 3" in text and "scale the memory output by the gate" in text
    assert "new settings: memory_gate (bool, default False)" in text and "✓ smoke" in text
    assert (lab.models_dir / "model.py").read_bytes() == living and not lab.run_dir("0.1.0").exists()
    sha = json.loads((lab.runs_dir / ".pending" / "0.1.0" / "code_change.json").read_text())["sha256"]

    fake.reply_tool("propose_plan", PLAN)  # the approved run: the plan again, the kept candidate reused
    calls = len(fake.requests)
    result = _new(lab, fake, approve_code=sha[:12])
    assert len(fake.requests) == calls + 1  # the code was not written again
    assert wait_state(lab, "0.1.0") == "finished", (lab.run_dir("0.1.0") / "train.log").read_text()
    run = lab.run_dir("0.1.0")
    record = json.loads((run / "code_change.json").read_text())
    assert record["source"] == "agent" and record["approval"]["sha256"] == sha and len(record["rounds"]) == 1
    assert [e["reason"] for e in record["rounds"][0]["edits"]][2] == "scale the memory output by the gate"
    assert lab.snapshot_path("0.1.0").read_text(encoding="utf-8") == cc.apply(living.decode(), cc.GATE)
    assert "memory_gate: true" in (run / "config.yaml").read_text()
    md = lab.record_path("0.1.0").read_text(encoding="utf-8")
    assert "## 🧩 Code change" in md and "a learnable gate on the memory output" in md
    assert "the gate parameter, only when the setting is on" in md
    for path in lab.root.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            assert API_KEY.encode() not in path.read_bytes(), path
    assert any("Created experiment 0.1.0" in m for m in result.messages)


def test_a_plan_without_code_change_behaves_as_before(lab, fake):
    fake.reply_tool("propose_plan", {k: v for k, v in PLAN.items() if k != "code_change"} | {"changes": {}, "rationale": {}})
    _new(lab, fake, launch=False)
    assert not (lab.run_dir("0.1.0") / "code_change.json").exists() and len(fake.requests) == 1


def test_a_proposal_s_code_change_is_implemented_by_new_from_proposal(lab, fake):
    from lifecycle.new import NewRequest, create_experiment
    from minimind.errors import GateRefused

    create_experiment(lab, NewRequest(version="0.1.0", goal="base", hypothesis="a base", agent="offline", launch=False))
    proposal = {"base": "0.1.0", "goal": "Gate the memory read", "hypothesis": "a learnable gate helps",
                "expect": "inference_loss < base", "sets": ["preset=memory"], "why": "the read is too strong",
                "proposed_by": "claude", "code_change": cc.GATE_CHANGE}
    (lab.run_dir("0.1.0") / "next.json").write_text(json.dumps(proposal), encoding="utf-8")
    _script(fake)
    with pytest.raises(GateRefused, match="needs your approval"):
        create_experiment(lab, NewRequest(version="0.1.1", goal=None, hypothesis=None, agent="claude",
                                          from_proposal="0.1.0"))
    prompt = fake.requests[0]["body"]["messages"][0]["content"]
    assert "## Code change proposed for this experiment" in prompt and cc.GATE_CHANGE["summary"] in prompt
    assert fake.requests[1]["body"]["tools"][0]["type"] == "text_editor_20250728"  # the implement step ran
    pending = json.loads((lab.runs_dir / ".pending" / "0.1.1" / "code_change.json").read_text())
    assert pending["source"] == "agent" and pending["change"]["summary"] == cc.GATE_CHANGE["summary"]


def test_the_analysis_tool_may_propose_a_code_change():
    from agent import tools
    from agent.codeplan import SCHEMA

    from types import SimpleNamespace

    nxt = tools.analysis_tool(SimpleNamespace(config_schema={}))["input_schema"]["properties"]["next_experiment"]
    assert nxt["properties"]["code_change"] == SCHEMA and "code_change" not in nxt["required"]
    problems: list[str] = []
    change, settings = tools._code_change(cc.GATE_CHANGE, problems)
    assert not problems and settings == {"model.memory_gate": "bool"} and change["touches"] == cc.GATE_CHANGE["touches"]
    tools._code_change({**cc.GATE_CHANGE, "touches": ["import os"]}, problems)
    assert problems and "touches" in problems[0]
    assert SCHEMA["properties"]["new_settings"]["items"]["required"] == ["name", "type", "default", "meaning"]
