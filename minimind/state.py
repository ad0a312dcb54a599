"""`runs/V/state.json`: the run's recorded state, and the honest state derived from it.

Writers (the launcher, the trainer's heartbeat, the evaluator, the agent) go through
`update_state`, a locked read-modify-write with an atomic rename. Readers go through
`derive_state`, a pure function that never calls a dead run `running`: it checks the
recorded pid *and* that pid's start time (pid reuse), the exit-code file written by the
run script's EXIT trap, and the heartbeat (PRODUCT.md section 4).
"""

from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from minimind.atomic import write_json

STATES = ("drafted", "running", "finished", "failed", "stopped", "guardrail_stopped", "lost")
FINAL_BY_TRAINER = ("stopped", "guardrail_stopped")  # states the trainer records itself before exiting
FLAGS = ("evaluated", "analysed", "reviewed", "committed")
HEARTBEAT_S = 60  # the trainer writes state.json at least this often while training
STALE_AFTER_S = 3 * HEARTBEAT_S

# Exit codes of `training.train`, read by the run script.
EXIT_FINISHED = 0
EXIT_STOPPED = 10
EXIT_GUARDRAIL = 11

STATE_FILE = "state.json"
EXIT_CODE_FILE = "exit_code"


def read_state(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / STATE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        # Writes are atomic, so this is outside damage; say so rather than guess.
        return {"state": "unknown", "error": f"{path} is not valid JSON"}


@contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    lock_path = Path(run_dir) / ".state.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update_state(run_dir: Path, **changes: Any) -> dict[str, Any]:
    """Merge `changes` into state.json atomically; returns the new state."""
    run_dir = Path(run_dir)
    with _locked(run_dir):
        state = read_state(run_dir)
        if state.get("state") == "unknown":
            state = {}
        state.update(changes)
        write_json(run_dir / STATE_FILE, state)
        return state


def read_exit_code(run_dir: Path) -> Optional[int]:
    try:
        text = (Path(run_dir) / EXIT_CODE_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text)
    except ValueError:
        return -1


def process_start_time(pid: int) -> Optional[int]:
    """Start time of `pid` in clock ticks since boot (Linux /proc), or None if gone."""
    try:
        raw = Path(f"/proc/{int(pid)}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError, OSError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = raw[raw.rindex(")") + 2:].split()
    if rest[0] == "Z":  # a zombie has exited; it only waits to be reaped
        return None
    return int(rest[19])  # field 22 overall


def is_alive(pid: Optional[int], start_time: Optional[int]) -> bool:
    """True only if `pid` exists and started when we recorded it did (not a reused pid)."""
    if not pid or start_time is None:
        return False
    return process_start_time(pid) == start_time


def derive_state(state: dict[str, Any], exit_code: Optional[int], alive: bool) -> str:
    """The honest state of a run from its record, exit-code file and liveness (pure)."""
    recorded = state.get("state", "drafted")
    if recorded == "drafted" and not state.get("pid"):
        return "drafted"
    if exit_code is not None:
        if recorded in FINAL_BY_TRAINER:
            return recorded
        return "finished" if exit_code == 0 else "failed"
    if alive:
        return recorded if recorded in FINAL_BY_TRAINER else "running"
    return "lost"


def is_stale(state: dict[str, Any], now: Optional[float] = None) -> bool:
    """Heartbeat older than STALE_AFTER_S while the process is alive: hung, not dead."""
    beat = state.get("heartbeat")
    return beat is not None and ((now or time.time()) - beat) > STALE_AFTER_S


def current(run_dir: Path) -> tuple[str, dict[str, Any]]:
    """(derived state, recorded state dict) for one run directory."""
    state = read_state(run_dir)
    exit_code = read_exit_code(run_dir)
    alive = is_alive(state.get("pid"), state.get("proc_start"))
    return derive_state(state, exit_code, alive), state
