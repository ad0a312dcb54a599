"""`minimind new --patch`: a human's code change through the code gate, approval bound to
the candidate's sha256, the change installed, snapshotted, recorded, checked at launch, undone."""

from __future__ import annotations

import json
import subprocess

import pytest

import code_candidates as cc
from lab_helpers import invoke, make_lab, wait_state
from lifecycle.code import codestatic

GOAL = ["--goal", "Gate the memory read", "--hypothesis", "a learnable gate on the memory output helps"]
SETS = ["--set", "preset=memory", "--set", "memory_gate=true"]


@pytest.fixture
def lab(tmp_path, bundled_data):
    return make_lab(tmp_path / "lab", bundled_data, steps=6)


def _patch(lab, tmp_path, edits, header="Scale the memory output by a learnable gate.\n\n"):
    living = (lab.models_dir / "model.py").read_text(encoding="utf-8")
    path = tmp_path / "change.diff"
    path.write_text(header + codestatic.unified_diff(living, cc.apply(living, edits)), encoding="utf-8")
    return path, cc.apply(living, edits)


def _sha(text):
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def _new(lab, *extra):
    return invoke(lab, "new", "0.1.0", *GOAL, *extra)


def test_nothing_launches_without_the_approval_of_these_bytes(lab, tmp_path):
    path, candidate = _patch(lab, tmp_path, cc.GATE)
    living = (lab.models_dir / "model.py").read_bytes()
    for extra in ([], ["--yes"], ["--approve-code", "0" * 12], ["--approve-code", _sha(candidate)[:12], "--set",
                                                                 "memory_gate=not-a-bool"]):
        result = _new(lab, "--patch", str(path), *SETS, *extra)
        assert result.exit_code in (2, 3), result.output
        assert (lab.models_dir / "model.py").read_bytes() == living
        assert not lab.run_dir("0.1.0").exists() and not lab.snapshot_path("0.1.0").exists()
    refused = _new(lab, "--patch", str(path), *SETS, "--yes")
    assert "needs your approval" in refused.output and "--yes never approves code" in refused.output
    assert "Scale the memory output by a learnable gate." in refused.output  # the hunks' reason
    assert refused.output.count("  hunk ") == 3 and "+        self.memory_gate = nn.Parameter" in refused.output
    assert "isolation: network" in refused.output and "✓ smoke" in refused.output
    pending = lab.runs_dir / ".pending" / "0.1.0"
    assert (pending / "model.py").read_text(encoding="utf-8") == candidate
    wrong = _new(lab, "--patch", str(path), *SETS, "--approve-code", "0" * 12)
    assert "does not match the candidate's sha256" in wrong.output


def test_an_approved_patch_is_installed_snapshotted_recorded_and_undone(lab, tmp_path):
    path, candidate = _patch(lab, tmp_path, cc.GATE)
    original = (lab.models_dir / "model.py").read_text(encoding="utf-8")
    result = _new(lab, "--patch", str(path), *SETS, "--approve-code", _sha(candidate)[:10], "--no-launch")
    assert result.exit_code == 0, result.output
    assert (lab.models_dir / "model.py").read_text(encoding="utf-8") == candidate
    assert lab.snapshot_path("0.1.0").read_text(encoding="utf-8") == candidate
    run = lab.run_dir("0.1.0")
    assert "memory_gate: true" in (run / "config.yaml").read_text(encoding="utf-8")
    record = json.loads((run / "code_change.json").read_text(encoding="utf-8"))
    assert record["approval"]["sha256"] == _sha(candidate) and record["approval"]["how"] == "--approve-code"
    assert record["source"] == "patch" and record["new_settings"] == ["memory_gate"] and record["isolation"]["network"]
    assert [s["stage"] for s in record["stages"]][-1] == "smoke"
    scratch = tmp_path / "apply"
    (scratch / "models").mkdir(parents=True)
    (scratch / "models" / "model.py").write_text(original, encoding="utf-8")
    subprocess.run(["git", "apply", str(run / "model.patch")], cwd=scratch, check=True)
    assert (scratch / "models" / "model.py").read_text(encoding="utf-8") == candidate
    text = lab.record_path("0.1.0").read_text(encoding="utf-8")
    assert "## 🧩 Code change" in text and text.count("Scale the memory output by a learnable gate.") >= 3
    assert "+                memory = memory * torch.sigmoid(self.memory_gate)" in text
    from lifecycle.document.draft import experiment_files

    files = experiment_files(lab, "0.1.0")
    assert {"runs/0.1.0/model.patch", "runs/0.1.0/code_change.json", "models/model_0_1_0.py", "models/model.py"} <= set(files)
    # the snapshot changed after approval: resume refuses to launch it
    snapshot = lab.snapshot_path("0.1.0")
    approved = snapshot.read_bytes()
    snapshot.write_bytes(approved + b"\n# edited\n")
    refused = invoke(lab, "resume", "0.1.0")
    assert refused.exit_code == 3 and "changed after approval" in refused.output
    snapshot.write_bytes(approved)
    # undo restores the living file; a second undo cannot reverse what is no longer there
    undone = invoke(lab, "undo-code", "0.1.0")
    assert undone.exit_code == 0, undone.output
    assert (lab.models_dir / "model.py").read_text(encoding="utf-8") == original
    again = invoke(lab, "undo-code", "0.1.0")
    assert again.exit_code == 1 and "cannot undo 0.1.0's code change" in again.output
    assert (lab.models_dir / "model.py").read_text(encoding="utf-8") == original


def test_a_patch_goes_through_the_same_stages(lab, tmp_path):
    living = (lab.models_dir / "model.py").read_bytes()
    leak, candidate = _patch(lab, tmp_path, cc.LEAK)
    result = _new(lab, "--patch", str(leak), "--approve-code", _sha(candidate)[:12])
    assert result.exit_code == 3 and "stage checks failed: causality" in result.output
    assert "Position t never sees tokens after t" in result.output
    escape, candidate = _patch(lab, tmp_path, cc.in_forward('__import__("os").system("true")'))
    result = _new(lab, "--patch", str(escape), "--approve-code", _sha(candidate)[:12])
    assert result.exit_code == 3 and "stage policy failed" in result.output and "__import__() is refused" in result.output
    assert (lab.models_dir / "model.py").read_bytes() == living and not lab.run_dir("0.1.0").exists()


def test_a_patch_to_another_file_is_refused(lab, tmp_path):
    path = tmp_path / "other.diff"
    path.write_text("--- a/training/train.py\n+++ b/training/train.py\n@@ -1 +1 @@\n-old\n+new\n", encoding="utf-8")
    result = _new(lab, "--patch", str(path), "--approve-code", "0" * 12)
    assert result.exit_code == 3 and "only models/model.py may change" in result.output


def test_an_approved_code_experiment_trains_to_the_end(lab, tmp_path):
    path, candidate = _patch(lab, tmp_path, cc.GATE)
    result = _new(lab, "--patch", str(path), *SETS, "--approve-code", _sha(candidate)[:12])
    assert result.exit_code == 0, result.output
    assert wait_state(lab, "0.1.0") == "finished", (lab.run_dir("0.1.0") / "train.log").read_text()
    from models.registry import load_checkpoint

    model, _ = load_checkpoint(lab.run_dir("0.1.0") / "checkpoints" / "last.pth", lab.models_dir)
    assert model.config.memory_gate is True and model.layers[0].memory_gate is not None
    # the analysis and the commit draft see the change's reasons, not only its diff
    wait_state(lab, "0.1.0", predicate=lambda derived, state: state.analysed or state.analysis_failed)
    draft = (lab.run_dir("0.1.0") / "commit_message.md").read_text(encoding="utf-8")
    model_part = draft.split("### models/model.py\n", 1)[1].split("###", 1)[0]
    assert "Scale the memory output by a learnable gate." in model_part, draft
    assert "### runs/0.1.0/model.patch" in draft and "### runs/0.1.0/code_change.json" in draft


def test_at_a_terminal_new_asks_and_only_yes_approves(lab, tmp_path, monkeypatch):
    import cli
    from click.testing import CliRunner

    monkeypatch.setattr(cli, "_interactive", lambda: True)
    path, candidate = _patch(lab, tmp_path, cc.GATE)
    living = (lab.models_dir / "model.py").read_bytes()
    args = ["new", "0.1.0", *GOAL, "--patch", str(path), *SETS, "--no-launch"]
    env = {"MINIMIND_LAB": str(lab.root)}
    declined = CliRunner().invoke(cli.main, args, env=env, input="n\n")
    assert declined.exit_code == 3 and "Approve this code change?" in declined.output
    assert (lab.models_dir / "model.py").read_bytes() == living and not lab.run_dir("0.1.0").exists()
    approved = CliRunner().invoke(cli.main, args, env=env, input="y\n")
    assert approved.exit_code == 0, approved.output
    assert "hunk 3" in approved.output.split("Approve this code change?")[0]
    record = json.loads((lab.run_dir("0.1.0") / "code_change.json").read_text(encoding="utf-8"))
    assert record["approval"]["how"] == "interactive" and record["approval"]["sha256"] == _sha(candidate)
