"""`minimind stop VERSION`: a graceful stop — the run checkpoints, then exits.

Only the run's own process group is signalled (the recorded pgid, verified by the
recorded process start time), never processes found by name. A run queued for GPU slots
leaves the queue and ends `stopped` without starting; a Slurm job is signalled through
`scancel` (lifecycle/running/slurm.py). Before the signal to a running run, runs/V/stop is written: every trainer rank polls it
each step, so workers that a launcher started in their own sessions, or on other
machines, stop at the same step too.
"""

from __future__ import annotations

import os
import signal
import time

from minimind.atomic import write_text
from minimind.errors import MinimindError
from minimind.lab import Lab
from minimind.rundir import STOP_FILE, current, is_alive, run_label


def stop_run(lab: Lab, name: str, timeout: int = 60) -> str:
    """Stop `name`: an experiment (every replicate that runs or waits) or one replicate, V@SEED."""
    from lifecycle.knowledge.replicates import target

    version, runs, one = target(lab, name)
    if one or len(runs) == 1:
        return _stop_one(lab, runs[0], name, timeout)
    active = [r for r in runs if current(r)[0] in ("running", "queued")]
    if not active:
        raise MinimindError(f"experiment {version} is not running (no replicate runs or waits)")
    # Queued ones first: a replicate freed by a stopped one must not start in between.
    active.sort(key=lambda r: current(r)[0] != "queued")
    return "\n".join(_stop_one(lab, r, run_label(r), timeout) for r in active)


def _stop_one(lab: Lab, run_dir, version: str, timeout: int) -> str:
    """SIGTERM to the run's process group; wait until the trainer has checkpointed and exited."""
    derived, state = current(run_dir)
    if derived not in ("running", "queued"):
        raise MinimindError(f"experiment {version} is not running (state: {derived})")
    was = derived
    if derived == "running":
        write_text(run_dir / STOP_FILE, f"{time.time()}\n")
    if state.backend == "slurm":
        from lifecycle.running.slurm import cancel

        cancel(state, derived)
    elif not state.pgid or not is_alive(state.pid, state.proc_start):
        raise MinimindError(f"experiment {version} has no live process group to signal")
    else:
        try:
            os.killpg(int(state.pgid), signal.SIGTERM)
        except ProcessLookupError:
            raise MinimindError(f"experiment {version}'s process group {state.pgid} is gone") from None
    deadline = time.time() + timeout
    while time.time() < deadline:
        derived, state = current(run_dir)
        if derived not in ("running", "queued"):
            if was == "queued" and not state.step:
                return f"Experiment {version}: {derived}, removed from the queue before it started."
            return f"Experiment {version}: {derived} at step {state.step} (checkpoint kept). Resume with: minimind resume {version}"
        time.sleep(0.5)
    raise MinimindError(f"experiment {version} did not stop within {timeout} s (it may be mid-evaluation); check 'minimind status {version}'")
