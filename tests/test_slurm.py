"""Slurm as the cluster backend, on a real single-node cluster (.ci/slurm-up.sh: munge, slurmctld and
slurmd on this machine). Every state asserted here comes from Slurm's own squeue/sacct answers.

Skipped, with the reason, when no cluster answers; `.ci/run` starts one before `make test`.
Each job takes the node's two CPUs, so a second job waits PENDING behind the first.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from lab_helpers import invoke, make_lab, wait_state
from test_lifecycle import GOAL, HYP

from minimind.rundir import current, read_state


def _unavailable() -> str | None:
    if shutil.which("sbatch") is None:
        return "Slurm is not installed (no sbatch on PATH); .ci/slurm-up.sh installs and starts a one-node cluster"
    try:
        proc = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s (is slurmctld running? .ci/slurm-up.sh starts it)"
    states = proc.stdout.split()
    if proc.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mixed", "allocated") for s in states):
        detail = (proc.stderr.strip().splitlines() or [f"node states {states or 'none'}"])[-1]
        return f"no usable Slurm node ({detail}); run .ci/slurm-up.sh as root"
    return None


REASON = _unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"Slurm cluster unavailable: {REASON}")

SLURM_SETTINGS = """\
slurm:
  time_limit: "{time}"
  cpus_per_task: 2
  memory: 2G
  signal_lead_s: {lead}
  setup:
    - echo "slurm.setup ran on $(hostname)"
"""


def _set_slurm(lab, time_limit: str, lead: int = 0) -> None:
    path = lab.root / "minimind.yaml"
    text = path.read_text().split("slurm:\n")[0]
    path.write_text(text + SLURM_SETTINGS.format(time=time_limit, lead=lead))


@pytest.fixture
def slurm_lab(tmp_path, bundled_data):  # noqa: F811
    lab = make_lab(tmp_path / "lab", bundled_data)
    path = lab.root / "minimind.yaml"
    path.write_text(path.read_text().replace("launch:\n", "launch:\n  backend: slurm\n"))
    _set_slurm(lab, "10")
    yield lab
    for version in lab.versions():  # never leave a job behind on the shared cluster
        for job in read_state(lab.run_dir(version)).slurm_jobs:
            subprocess.run(["scancel", job], capture_output=True, timeout=30)


def _new(lab, version, steps):
    # epochs: the bundled data gives one epoch of few steps; long runs need many passes.
    result = invoke(lab, "new", version, "--goal", GOAL, "--hypothesis", HYP, "--set", f"max_steps={steps}",
                    "--set", "save_interval=5", "--set", "epochs=1000")
    assert result.exit_code == 0, result.output
    assert "Submitted: Slurm job" in result.output, result.output
    return read_state(lab.run_dir(version)).slurm_job


def _squeue_state(job):
    return subprocess.run(["squeue", "--states=all", "--noheader", "--format=%T", f"--jobs={job}"],
                          capture_output=True, text=True, timeout=30).stdout.strip()


def test_submit_queue_run_finish_stop_resume(slurm_lab):
    lab = slurm_lab
    sbatch = None
    first = _new(lab, "4.0.0", 150)
    sbatch = (lab.run_dir("4.0.0") / "run.sbatch").read_text()
    assert "#SBATCH --time=10" in sbatch and "#SBATCH --cpus-per-task=2" in sbatch and "#SBATCH --mem=2G" in sbatch
    assert 'echo "slurm.setup ran' in sbatch and "-m lifecycle.running.pipeline" in sbatch
    wait_state(lab, "4.0.0", predicate=lambda d, s: d == "running" and (s.step or 0) >= 4, timeout=120)

    # The second job waits behind the first: Slurm says PENDING, status says queued.
    second = _new(lab, "4.0.1", 12)
    seen = []
    assert _squeue_state(second) == "PENDING"
    rows = {r["version"]: r for r in json.loads(invoke(lab, "status", "--json").output)}
    assert rows["4.0.1"]["state"] == "queued" and rows["4.0.1"]["slurm_job"] == second
    assert rows["4.0.0"]["state"] == "running" and rows["4.0.0"]["slurm_job"] == first
    seen.append("queued")

    # stop = scancel --signal=TERM: the trainer checkpoints, the run ends stopped.
    result = invoke(lab, "stop", "4.0.0")
    assert result.exit_code == 0 and "stopped at step" in result.output, result.output
    derived, state = current(lab.run_dir("4.0.0"))
    assert derived == "stopped" and (lab.run_dir("4.0.0") / "checkpoints" / "last.pth").exists()
    stopped_at = state.step
    assert 4 <= stopped_at < 150

    # The freed node runs the second: queued -> running -> finished, evaluated and analysed.
    deadline = time.time() + 240
    while time.time() < deadline:
        derived = current(lab.run_dir("4.0.1"))[0]
        if not seen or seen[-1] != derived:
            seen.append(derived)
        if derived not in ("queued", "running"):
            break
        time.sleep(0.3)
    assert seen == ["queued", "running", "finished"], (seen, (lab.run_dir("4.0.1") / "train.log").read_text()[-2000:])
    state = read_state(lab.run_dir("4.0.1"))
    assert state.evaluated and state.analysed
    assert (lab.run_dir("4.0.1") / "analysis.json").exists()
    log = invoke(lab, "log", "4.0.1")
    assert "slurm.setup ran on" in log.output and "[pipeline] experiment 4.0.1: done" in log.output

    # resume submits a new job that continues from the checkpoint and completes; both ids kept.
    result = invoke(lab, "resume", "4.0.0")
    assert result.exit_code == 0 and "from its last checkpoint" in result.output, result.output
    state = read_state(lab.run_dir("4.0.0"))
    assert state.slurm_jobs == [first, state.slurm_job] and state.slurm_job != first
    assert wait_state(lab, "4.0.0", timeout=300) == "finished"
    log = (lab.run_dir("4.0.0") / "train.log").read_text()
    assert f"resuming from step {stopped_at}" in log


def test_time_limit_stops_at_checkpoint_and_resumes(slurm_lab):
    lab = slurm_lab
    _set_slurm(lab, "1", lead=0)  # one minute, no early signal: Slurm's own SIGTERM at the limit
    job = _new(lab, "5.0.0", 100000)
    assert wait_state(lab, "5.0.0", timeout=200, until=("stopped", "failed", "lost", "finished")) == "stopped"
    assert subprocess.run(["squeue", "--states=all", "--noheader", "--format=%T", f"--jobs={job}"],
                          capture_output=True, text=True, timeout=30).stdout.strip() == "TIMEOUT"
    derived, state = current(lab.run_dir("5.0.0"))
    assert state.stop_reason.startswith("Slurm time limit reached: stopped at its last checkpoint"), state.stop_reason
    assert (lab.run_dir("5.0.0") / "checkpoints" / "last.pth").exists()
    stopped_at = state.step
    rows = {r["version"]: r for r in json.loads(invoke(lab, "status", "--json").output)}
    assert rows["5.0.0"]["state"] == "stopped" and "time limit" in rows["5.0.0"]["stop_reason"]

    # Raise the limit in minimind.yaml and resume: a new job continues from the checkpoint.
    _set_slurm(lab, "10", lead=0)
    result = invoke(lab, "resume", "5.0.0")
    assert result.exit_code == 0 and "from its last checkpoint" in result.output, result.output
    assert "#SBATCH --time=10" in (lab.run_dir("5.0.0") / "run.sbatch").read_text()
    wait_state(lab, "5.0.0", timeout=120, predicate=lambda d, s: d == "running" and (s.step or 0) > stopped_at)
    assert len(read_state(lab.run_dir("5.0.0")).slurm_jobs) == 2
    assert invoke(lab, "stop", "5.0.0").exit_code == 0
    assert current(lab.run_dir("5.0.0"))[0] == "stopped"


def test_pending_job_stopped_never_starts(slurm_lab):
    lab = slurm_lab
    _new(lab, "6.0.0", 100000)
    wait_state(lab, "6.0.0", predicate=lambda d, s: d == "running", timeout=120)
    _new(lab, "6.0.1", 12)
    assert current(lab.run_dir("6.0.1"))[0] == "queued"
    result = invoke(lab, "stop", "6.0.1")
    assert result.exit_code == 0 and "removed from the queue" in result.output, result.output
    derived, state = current(lab.run_dir("6.0.1"))
    assert derived == "stopped" and "never started" in state.stop_reason
    assert invoke(lab, "stop", "6.0.0").exit_code == 0
