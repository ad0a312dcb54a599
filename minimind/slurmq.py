"""What Slurm says about a job: `squeue`, then `sacct` for jobs squeue no longer lists.

Read-only and bounded, so `status` stays fast: one `squeue` call answers for all of the
user's jobs and is reused for QUERY_TTL_S within a process; each call has a timeout;
`sacct` is asked only about jobs squeue did not list, and a cluster without accounting
storage (sacct: "accounting storage is disabled") is remembered and not asked again.
A scheduler that does not answer gives None, which `rundir.derive_slurm_state` reads
together with the heartbeat. Submitting and cancelling are in `lifecycle/running/slurm.py`.
"""

from __future__ import annotations

import subprocess
import time
from typing import Optional

QUERY_TIMEOUT_S = 10
QUERY_TTL_S = 2.0

_squeue: dict[str, str] = {}
_squeue_at = -1e9
_sacct: dict[str, str] = {}
_sacct_disabled = False


def _run(argv: list[str]) -> Optional[str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        global _sacct_disabled
        if argv[0] == "sacct" and "accounting storage is disabled" in (proc.stderr + proc.stdout).lower():
            _sacct_disabled = True
        return None
    return proc.stdout


def _parse(text: str) -> dict[str, str]:
    """'123|RUNNING' lines (sacct adds '123.batch' steps and 'CANCELLED by 0') -> {job id: STATE}."""
    states: dict[str, str] = {}
    for line in text.splitlines():
        job, _, state = line.strip().partition("|")
        if job and state and "." not in job:
            states[job] = state.split()[0].rstrip("+")
    return states


def refresh() -> bool:
    """Re-read squeue now; False when Slurm did not answer."""
    global _squeue, _squeue_at
    out = _run(["squeue", "--me", "--states=all", "--noheader", "--format=%i|%T"])
    _squeue_at = time.monotonic()
    if out is None:
        _squeue = {}
        return False
    _squeue = _parse(out)
    return True


def job_state(job_id: str) -> Optional[str]:
    """The job's Slurm state (PENDING, RUNNING, COMPLETED, TIMEOUT, ...), or None if unknown."""
    job_id = str(job_id)
    fresh = time.monotonic() - _squeue_at > QUERY_TTL_S and refresh()
    if job_id not in _squeue and not fresh and job_id not in _sacct:
        refresh()  # submitted after the cached answer (a job never leaves squeue --states=all that fast)
    if job_id in _squeue:
        return _squeue[job_id]
    if job_id in _sacct:  # an ended job's state no longer changes
        return _sacct[job_id]
    if _sacct_disabled:
        return None
    out = _run(["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={job_id}", "--format=JobID,State"])
    if out is None:
        return None
    found = _parse(out)
    if job_id in found and found[job_id] not in ("PENDING", "RUNNING", "REQUEUED", "SUSPENDED"):
        _sacct[job_id] = found[job_id]
    return found.get(job_id)
