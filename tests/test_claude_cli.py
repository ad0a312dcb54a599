"""`minimind new --agent claude` end to end: the real CLI, the real SDK, a fake Messages API.

The tool's values must reach `runs/V/config.yaml` and the record; a hostile or failing
answer must leave the lab exactly as it was (no run folder, no record, no snapshot).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from agent import calllog
from lifecycle.init import init_lab

API_KEY = "sk-ant-cli-test-0123456789-SECRET"
NEW = ["new", "9.9.9", "--goal", "Smaller batches, steadier memory", "--hypothesis", "batch 7 helps",
       "--agent", "claude", "--no-launch"]
PLAN = {
    "thinking": "A smaller batch gives more optimizer steps on the small corpus.",
    "changes": {"train.batch_size": 7, "model.freeze_ratio": 0.35},
    "rationale": {"train.batch_size": "more steps per epoch", "model.freeze_ratio": "keep more facts fixed"},
    "expected": "Lower inference loss than the defaults.",
    "risks": ["memorisation"],
}


@pytest.fixture
def lab(tmp_path):
    return init_lab(tmp_path / "lab")


def _run(lab, fake, args=NEW, key=API_KEY):
    env = {"MINIMIND_LAB": str(lab.root), "ANTHROPIC_API_KEY": key, "ANTHROPIC_BASE_URL": fake.url,
           "MINIMIND_AGENT_BACKEND": None}
    return CliRunner().invoke(cli.main, args, env=env)


def _tree(root: Path) -> set[str]:
    """Every path of the lab but git's and the kept logs of failed attempts (runs/.failed)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if ".git" not in p.relative_to(root).parts and ".failed" not in p.relative_to(root).parts}


def _failed_logs(lab) -> list[Path]:
    return sorted((lab.root / "runs" / ".failed").glob("9.9.9-*/agent"))


def test_tool_values_reach_config_and_record(lab, fake):
    fake.reply_tool("propose_plan", PLAN)
    result = _run(lab, fake)
    assert result.exit_code == 0, result.output
    run = lab.root / "runs" / "9.9.9"
    config = (run / "config.yaml").read_text(encoding="utf-8")
    assert "batch_size: 7\n" in config and "freeze_ratio: 0.35\n" in config
    record = (lab.root / "experiment" / "experiment_9.9.9.md").read_text(encoding="utf-8")
    assert "A smaller batch gives more optimizer steps" in record
    assert "claude" in record
    (call,) = calllog.read_calls(run / "agent")
    assert call["step"] == "plan" and call["backend"] == "claude"
    assert fake.requests[0]["body"]["tool_choice"] == {"type": "tool", "name": "propose_plan"}
    for path in lab.root.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            assert API_KEY.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("changes", [
    {"model.freeze_policy": "random; rm -rf x"},
    {"data.pretrain": "../../etc/passwd"},
    {"guardrails.train_loss.danger": 0.0},
    {"train.batch_size": 10**12},
])
def test_hostile_answers_leave_the_lab_unchanged(lab, fake, changes):
    before = _tree(lab.root)
    fake.reply_tool("propose_plan", PLAN | {"changes": changes})
    fake.reply_tool("propose_plan", PLAN | {"changes": changes})
    result = _run(lab, fake)
    assert result.exit_code == 1
    assert "invalid plan output twice" in result.output and "Traceback" not in result.output
    assert _tree(lab.root) == before
    assert len(fake.requests) == 2
    (kept,) = _failed_logs(lab)  # the calls were made (and billed): their log survives
    assert len(calllog.read_calls(kept)) == 2


def test_api_failure_leaves_the_lab_unchanged(lab, fake):
    before = _tree(lab.root)
    for _ in range(4):  # the lab default max_retries is 3: four attempts
        fake.reply_error(529, "Overloaded")
    result = _run(lab, fake)
    assert result.exit_code == 1
    assert "HTTP 529 overloaded_error" in result.output and "Traceback" not in result.output
    assert _tree(lab.root) == before
    (kept,) = _failed_logs(lab)
    calls = calllog.read_calls(kept)
    assert len(calls) == 4 and all(c["cost_usd"] > 0 for c in calls)  # each try at a pessimistic estimate


def test_missing_key_is_refused_before_anything_is_written(lab, fake):
    before = _tree(lab.root)
    result = _run(lab, fake, key=None)
    assert result.exit_code == 1
    assert "ANTHROPIC_API_KEY is not set" in result.output
    assert fake.requests == [] and _tree(lab.root) == before


def test_auto_falls_back_to_offline_and_the_record_says_so(lab, fake):
    for _ in range(4):
        fake.reply_error(529, "Overloaded")
    args = [a if a != "claude" else "auto" for a in NEW]
    result = _run(lab, fake, args=args)
    assert result.exit_code == 0, result.output
    record = (lab.root / "experiment" / "experiment_9.9.9.md").read_text()
    assert "Written by the offline agent." in record and "The claude backend failed" in record
    calls = calllog.read_calls(lab.root / "runs" / "9.9.9" / "agent")
    assert {c["backend"] for c in calls} == {"claude", "offline"}
    assert API_KEY not in (lab.root / "runs" / "9.9.9" / "agent" / "calls.jsonl").read_text()
    detail = CliRunner().invoke(cli.main, ["status", "9.9.9", "--json"], env={"MINIMIND_LAB": str(lab.root)})
    import json

    agent = json.loads(detail.output)["agent"]
    assert agent["calls"] == len(calls) and agent["calls"] >= 2 and agent["cost_usd"] >= 0


def test_a_failed_new_keeps_its_call_log_and_the_next_attempt_counts_it(lab, fake):
    fake.reply_tool("propose_plan", PLAN | {"changes": {"data.pretrain": "x"}})
    fake.reply_tool("propose_plan", PLAN | {"changes": {"data.pretrain": "x"}})
    env = {"MINIMIND_AGENT_MAX_USD": "0.01"}  # two calls of 1000 in / 200 out on sonnet: $0.012
    result = CliRunner().invoke(cli.main, NEW, env={"MINIMIND_LAB": str(lab.root), "ANTHROPIC_API_KEY": API_KEY,
                                                   "ANTHROPIC_BASE_URL": fake.url, **env})
    assert result.exit_code == 1 and not (lab.root / "runs" / "9.9.9").exists()
    (kept,) = _failed_logs(lab)
    assert calllog.summary(kept)["cost_usd"] == pytest.approx(0.012)
    fake.reply_tool("propose_plan", PLAN)
    result = CliRunner().invoke(cli.main, NEW, env={"MINIMIND_LAB": str(lab.root), "ANTHROPIC_API_KEY": API_KEY,
                                                   "ANTHROPIC_BASE_URL": fake.url, **env})
    assert result.exit_code == 1
    assert "budget of $0.01 for this experiment is spent" in result.output and "earlier failed attempts" in result.output
    assert len(fake.requests) == 2  # the second attempt asked nothing


def test_the_humans_set_wins_over_the_same_key_from_the_model(lab, fake):
    fake.reply_tool("propose_plan", PLAN | {"changes": {"model.preset": "memory", "train.batch_size": 7},
                                            "rationale": {"model.preset": "memory is the point"}})
    result = _run(lab, fake, args=NEW + ["--set", "preset=memory"])
    assert result.exit_code == 0, result.output
    assert len(fake.requests) == 1  # no repair round
    run = lab.root / "runs" / "9.9.9"
    assert "preset: memory\n" in (run / "config.yaml").read_text()
    record = (lab.root / "experiment" / "experiment_9.9.9.md").read_text(encoding="utf-8")
    assert "The agent also proposed `model.preset`, which the human set with --set" in record
    (call,) = calllog.read_calls(run / "agent")
    assert any("model.preset" in n for n in call["notes"])
    plan = __import__("json").loads((run / "plan.json").read_text())
    assert plan["dropped"] and [c["key"] for c in plan["changes"]] == ["train.batch_size"]  # memory is the lab default


def test_a_value_equal_to_the_base_is_not_a_change(lab):
    from lifecycle.init import init_lab  # noqa: F401  (the lab fixture made it)

    result = CliRunner().invoke(cli.main, ["new", "9.9.9", "--goal", "g", "--hypothesis", "h", "--agent", "offline",
                                           "--no-launch", "--set", "n_layers=8", "--set", "batch_size=7"],
                                env={"MINIMIND_LAB": str(lab.root)})
    assert result.exit_code == 0, result.output
    plan = __import__("json").loads((lab.root / "runs" / "9.9.9" / "plan.json").read_text())
    keys = [c["key"] for c in plan["changes"]]
    assert keys == ["train.batch_size"], plan["changes"]  # n_layers 8 is the default: not a change
    record = (lab.root / "experiment" / "experiment_9.9.9.md").read_text(encoding="utf-8")
    assert "8 → 8" not in record


def test_first_experiment_diff_is_exactly_gits(lab):
    import re
    import subprocess

    model = lab.root / "models" / "model.py"
    text = model.read_text(encoding="utf-8")
    model.write_text(text.replace("class MiniMindLM", "# a researcher's note\nclass MiniMindLM", 1) + "# the last line\n",
                     encoding="utf-8")
    result = CliRunner().invoke(cli.main, ["new", "0.1.0", "--goal", "g", "--hypothesis", "h", "--agent", "offline",
                                           "--no-launch"], env={"MINIMIND_LAB": str(lab.root)})
    assert result.exit_code == 0, result.output
    ours = (lab.root / "runs" / "0.1.0" / "model.diff").read_bytes()
    git = subprocess.run(["git", "diff", "--no-color", "-U3", "HEAD", "--", "models/model.py"], cwd=lab.root,
                         capture_output=True).stdout

    def hunks(raw: bytes) -> bytes:  # from the first hunk on; git adds the function name after @@
        body = raw[raw.index(b"\n@@") + 1:]
        return re.sub(rb"^(@@ [^@]+ @@).*$", rb"\1", body, flags=re.M)

    assert hunks(ours) == hunks(git) and ours.endswith(b"\n")
