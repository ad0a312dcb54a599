"""Labs made by minimind dc717c6 (before the layered redesign) keep working.

The fixture is a real lab that version made (tests/fixtures/README.md): a finished and
analysed run, a run stopped mid-training, its bash run scripts, its run-script template
and its model snapshots. Its absolute paths are rewritten to the temporary copy.
"""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from lab_helpers import invoke, metrics_steps, wait_state

FIXTURE = Path(__file__).parent / "fixtures" / "lab_dc717c6.tar.xz"
OLD_ROOT, OLD_PYTHON = "/tmp/legacy", "/work/main/.venv/bin/python"


@pytest.fixture(scope="module")
def legacy_source(tmp_path_factory) -> Path:
    """The fixture lab, extracted once, with its data rebuilt (the build is deterministic)."""
    from corpus.build import build

    where = tmp_path_factory.mktemp("legacy")
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(where, filter="data")
    root = where / "legacy"
    build(root / "data", "small", progress=False)
    return root


@pytest.fixture
def legacy(legacy_source, tmp_path):
    """A private copy of the legacy lab with its paths pointing at the copy."""
    from minimind.lab import Lab

    root = tmp_path / "lab"
    shutil.copytree(legacy_source, root, symlinks=True)
    for script in root.glob("runs/*/run.sh"):
        text = script.read_text().replace(OLD_PYTHON, sys.executable).replace(OLD_ROOT, str(root))
        script.write_text(text)
    return Lab(root)


def test_status_eval_review_commit_of_a_finished_legacy_run(legacy):
    status = json.loads(invoke(legacy, "status", "--json").output)
    assert [(s["version"], s["state"]) for s in status] == [("0.1.0", "finished"), ("0.1.1", "stopped")]
    assert status[0]["evaluated"] and status[0]["analysed"]

    before = json.loads((legacy.run_dir("0.1.0") / "eval.json").read_text())
    result = invoke(legacy, "eval", "0.1.0")
    assert result.exit_code == 0, result.output
    after = json.loads((legacy.run_dir("0.1.0") / "eval.json").read_text())
    # Its snapshot and checkpoint rebuild the same model: the same numbers to float precision.
    for key in ("val_loss", "inference_loss", "train_loss"):
        assert after[key] == pytest.approx(before[key], rel=1e-5, abs=1e-6), key
    # its memory_entropy was the candidate entropy; its snapshot predates the selection measure
    assert "memory_candidate_entropy" not in before and before["memory_entropy"] is not None
    assert after["memory_candidate_entropy"] == pytest.approx(before["memory_entropy"], rel=1e-5, abs=1e-6)
    assert after["memory_entropy"] is None and after["guardrails"]["memory_entropy"]["level"] == "n/a"
    assert after["recall"]["both"]["p_at_1"] == pytest.approx(before["recall"]["both"]["p_at_1"])

    assert invoke(legacy, "review", "0.1.0", "--approve").exit_code == 0
    result = invoke(legacy, "commit", "0.1.0")
    assert result.exit_code == 0, result.output
    import git

    committed = git.Repo(legacy.root).head.commit.stats.files
    assert "runs/0.1.0/run.sh" in committed and "models/model_0_1_0.py" in committed


def test_resume_of_a_legacy_stopped_run_upgrades_its_script_and_finishes(legacy):
    steps_before = metrics_steps(legacy, "0.1.1")
    assert steps_before[-1] == 114
    result = invoke(legacy, "resume", "0.1.1")
    assert result.exit_code == 0, result.output
    assert "predates the Python pipeline" in result.output
    assert "lifecycle.running.pipeline" in (legacy.run_dir("0.1.1") / "run.sh").read_text()
    assert wait_state(legacy, "0.1.1") == "finished"
    steps = metrics_steps(legacy, "0.1.1")
    assert steps == sorted(set(steps)) and steps[-1] == 300 and 114 in steps and 116 in steps
    state = json.loads((legacy.run_dir("0.1.1") / "state.json").read_text())
    assert state["evaluated"] and state["analysed"]


def test_a_run_started_by_the_old_bash_script_still_finishes(legacy):
    """A run that was training under the old run.sh when the lab upgraded: its end-of-run calls work."""
    from lifecycle.running.launch import start_detached
    from minimind.rundir import clear_exit_code, update_state

    run_dir = legacy.run_dir("0.1.1")
    assert "agent.finish" in (run_dir / "run.sh").read_text()  # the legacy script, untouched
    clear_exit_code(run_dir)
    update_state(run_dir, state="running", stop_reason=None, train_outcome=None, phase="train")
    start_detached(legacy, run_dir, resume=True)
    assert wait_state(legacy, "0.1.1") == "finished"
    assert "[run.sh] experiment 0.1.1: done" in (run_dir / "train.log").read_text()
    state = json.loads((run_dir / "state.json").read_text())
    assert state["evaluated"] and state["analysed"]
    assert (legacy.record_path("0.1.1")).read_text().count("Hypothesis verdict") >= 1


def test_new_experiment_in_a_legacy_lab_upgrades_the_template(legacy):
    result = invoke(legacy, "new", "0.2.0", "--goal", "continue", "--hypothesis", "inference loss lower than base",
                    "--set", "max_steps=4", "--agent", "offline")
    assert result.exit_code == 0, result.output
    assert "templates/run.sh.j2.legacy" in result.output
    assert "agent.finish" in (legacy.templates_dir / "run.sh.j2.legacy").read_text()
    assert "lifecycle.running.pipeline" in (legacy.run_dir("0.2.0") / "run.sh").read_text()
    assert wait_state(legacy, "0.2.0") == "finished"
    # the base config from the old version (with its retired model field) was inherited
    assert (legacy.run_dir("0.2.0") / "eval.json").exists()


def test_a_lab_whose_template_names_the_pipeline_by_its_old_path_still_runs(tmp_path, bundled):
    """Labs made before the lifecycle moved into rooms keep a run-script template that execs
    `python -m lifecycle.pipeline`; their new experiments still train, evaluate and analyse."""
    from lab_helpers import make_lab

    lab = make_lab(tmp_path / "lab", bundled, steps=4)
    template = lab.templates_dir / "run.sh.j2"
    template.write_text(template.read_text().replace("-m lifecycle.running.pipeline", "-m lifecycle.pipeline"))
    result = invoke(lab, "new", "0.1.0", "--goal", "g", "--hypothesis", "inference loss is finite")
    assert result.exit_code == 0, result.output
    assert "-m lifecycle.pipeline " in (lab.run_dir("0.1.0") / "run.sh").read_text()
    exit_code = lab.run_dir("0.1.0") / "exit_code"  # the pipeline's last word, after the analysis
    wait_state(lab, "0.1.0", predicate=lambda derived, state: exit_code.exists() or derived == "lost")
    assert exit_code.read_text().strip() == "0" and (lab.run_dir("0.1.0") / "analysis.json").exists()
