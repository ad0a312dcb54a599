"""`minimind new` refuses what cannot run, before anything is written: a data path that does not
exist, GPU slots naming devices the machine does not have, guardrail thresholds that flip the
guardrail's direction, and --force without the --reason the record keeps."""

from __future__ import annotations

import subprocess

import pytest

from lab_helpers import invoke, make_lab, tree

GOAL = "Baseline on the bundled facts"
HYP = "A dense model lowers inference loss below uniform"
NEW = ["new", "0.1.0", "--goal", GOAL, "--hypothesis", HYP]


@pytest.fixture
def lab(tmp_path, bundled_data):
    return make_lab(tmp_path / "lab", bundled_data)


def _git_status(lab) -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=lab.root, capture_output=True, text=True).stdout


def _refused(lab, args, code, message):
    before, status_before = tree(lab.root), _git_status(lab)
    result = invoke(lab, *args)
    assert result.exit_code == code, result.output
    lines = [l for l in result.output.strip().splitlines() if l]
    assert len(lines) == 1 and message in lines[0], result.output
    assert tree(lab.root) == before and _git_status(lab) == status_before
    return lines[0]


@pytest.mark.parametrize("extra, message", [
    (["--set", "data.pretrain=data/pretrian.jsonl"], "data.pretrain data/pretrian.jsonl does not exist"),
    (["--set", "data.probes=data/nope.json", "--no-launch"], "data.probes data/nope.json does not exist"),
    (["--set", "data.knowledge=missing/knowledge.json"], "data.knowledge missing/knowledge.json does not exist"),
])
def test_new_refuses_a_data_path_that_does_not_exist(lab, extra, message):
    _refused(lab, [*NEW, *extra], 2, message)


def test_a_launch_needs_every_data_path_the_run_reads(lab):
    """A path inherited from the lab's settings (not --set) is refused when the run would read it."""
    settings = lab.settings_path.read_text()
    lab.settings_path.write_text(settings.replace("launch:\n", "data:\n  knowledge: data/gone.json\nlaunch:\n"))
    _refused(lab, [*NEW, "--set", "preset=memory"], 1, "data.knowledge data/gone.json does not exist")
    # a dense model never reads the knowledge file: nothing to refuse
    assert invoke(lab, *NEW, "--no-launch").exit_code == 0


def test_new_refuses_gpus_the_machine_does_not_have(lab, monkeypatch):
    from lifecycle.running import slots

    monkeypatch.setattr(slots, "detect_gpus", lambda: [0, 1])
    line = _refused(lab, [*NEW, "--set", "launch.gpus=[0, 5]"], 2, "launch.gpus names GPU 5")
    assert "this machine has GPU 0, 1" in line
    # the refusal does not wait for the launch: a draft names the same devices
    _refused(lab, [*NEW, "--set", "launch.gpus=[7]", "--no-launch"], 2, "launch.gpus names GPU 7")


@pytest.mark.parametrize("key, value, message", [
    ("guardrails.repetition_rate.safe", "0.9", "guardrails.repetition_rate: safe 0.9 is above danger 0.8"),
    ("guardrails.train_loss.danger", "0.7", "guardrails.train_loss: safe 0.5 is below danger 0.7"),
])
def test_new_refuses_a_guardrail_whose_safe_side_is_flipped(lab, key, value, message):
    line = _refused(lab, [*NEW, "--set", f"{key}={value}", "--no-launch"], 2, message)
    assert "high values are bad" in line or "low values are bad" in line


def test_force_needs_a_reason(lab):
    _refused(lab, [*NEW, "--force"], 2, "--force needs --reason")
    _refused(lab, [*NEW, "--force", "--reason", "  "], 2, "--force needs --reason")
