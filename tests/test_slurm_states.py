"""Slurm's job states onto experiment states (rundir.derive_slurm_state, pure) and the per-node
launch command; no cluster needed."""

from __future__ import annotations

import time

import pytest

from lifecycle.running.slurm import node_command
from minimind.rundir import RunState, derive_slurm_state


def _state(**kw):
    return RunState(backend="slurm", slurm_job="7", **kw)


@pytest.mark.parametrize("job, exit_code, recorded, want, reason", [
    ("PENDING", None, {}, "queued", None),
    ("RUNNING", None, {"heartbeat": 0.0}, "running", None),          # Slurm's word beats an old heartbeat
    ("COMPLETED", 0, {"state": "running"}, "finished", None),         # the pipeline's own outcome
    ("FAILED", 1, {"state": "running"}, "failed", "the Slurm job failed"),
    ("FAILED", 10, {"state": "stopped", "stop_reason": "signal SIGTERM"}, "stopped", "signal SIGTERM"),
    ("TIMEOUT", 10, {"state": "stopped", "step": 40}, "stopped", "Slurm time limit reached: stopped at its last checkpoint (step 40); resumable"),
    ("TIMEOUT", None, {"state": "running", "step": 40, "trainer_pid": 5}, "stopped", "Slurm time limit reached: stopped at its last checkpoint (step 40); resumable"),
    ("CANCELLED", None, {"state": "queued"}, "stopped", "cancelled in Slurm (scancel) while queued; it never started"),
    ("OUT_OF_MEMORY", None, {"state": "running", "step": 3}, "failed", "the Slurm job ran out of memory (OUT_OF_MEMORY)"),
    ("NODE_FAIL", 1, {"state": "running"}, "failed", "a node of the Slurm job failed (NODE_FAIL)"),
    (None, None, {"state": "running", "heartbeat": 1000.0}, "lost", "Slurm no longer knows the job and the run left no exit code"),
    (None, 0, {"state": "running"}, "finished", None),               # purged from squeue, no sacct: the exit code
])
def test_slurm_states_map_onto_experiment_states(job, exit_code, recorded, want, reason):
    derived, why = derive_slurm_state(_state(**recorded), exit_code, job, now=2000.0)
    assert (derived, why) == (want, reason)


def test_unanswered_scheduler_trusts_only_a_fresh_heartbeat():
    now = time.time()
    assert derive_slurm_state(_state(state="running", heartbeat=now - 5), None, None, now=now)[0] == "running"
    assert derive_slurm_state(_state(state="running", heartbeat=now - 3600), None, None, now=now)[0] == "lost"


def test_one_launcher_per_node(monkeypatch):
    import lifecycle.running.slurm as slurm

    monkeypatch.setattr(slurm, "_call", lambda argv, what, env=None: "gpu-a01\ngpu-a02")
    argv = ["/py", "-m", "accelerate.commands.launch", "--num_processes", "8", "--num_machines", "2",
            "--machine_rank", "0", "-m", "training.train", "--run-dir", "/lab/runs/1.0.0"]
    cmd = node_command(argv, 2, 29600)
    assert cmd[:4] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    script = cmd[-1]
    assert '--machine_rank "$SLURM_NODEID"' in script and "--main_process_ip gpu-a01" in script
    assert "--main_process_port 29600" in script and script.count("--machine_rank") == 1
    assert script.endswith("-m training.train --run-dir /lab/runs/1.0.0")
