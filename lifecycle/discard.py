"""`minimind discard VERSION`: remove a drafted experiment that never ran, with its snapshot.

Only a draft that was never launched goes: no process was started for it, no step trained,
no checkpoint, exit code or metrics exist, and it was never committed. Anything that ran is
evidence, and is refused. The removal is all or nothing: the run directory, the record and
the snapshot are first moved aside under one name, the notebook is rewritten, and only
then are they deleted; a failure moves them back. Signals wait until it is done.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from minimind.errors import GateRefused, MinimindError
from minimind.lab import Lab
from minimind.rundir import CHECKPOINTS_DIR, EXIT_CODE_FILE, METRICS_FILE, RunState, current


def ran(run_dir: Path, state: RunState) -> list[str]:
    """The signs that this experiment was launched or trained, in words (empty: it never ran)."""
    signs = []
    if state.pid or state.started_at or state.slurm_jobs:
        signs.append("it was launched")
    if state.step:
        signs.append(f"it trained {state.step} step(s)")
    for name, what in ((CHECKPOINTS_DIR, "checkpoints"), (METRICS_FILE, "metrics"), (EXIT_CODE_FILE, "an exit code")):
        if (run_dir / name).exists():
            signs.append(f"it has {what} ({name})")
    if state.committed:
        signs.append("it is committed")
    return signs


def discard_experiment(lab: Lab, version: str) -> str:
    from minimind.undo import signals_held

    from minimind.rundir import PENDING_DIR

    pending = lab.runs_dir / PENDING_DIR / version
    if not lab.run_dir(version).exists() and pending.is_dir():
        return _discard_pending(lab, version, pending)
    run_dir = lab.require_run(version)
    derived, state = current(run_dir)
    if derived != "drafted":
        raise GateRefused(f"experiment {version} is {derived}: discard removes only a drafted experiment that never ran")
    signs = ran(run_dir, state)
    if signs:
        raise GateRefused(f"experiment {version} ran ({'; '.join(signs)}): discard removes only a draft that never ran")
    lock = lab.runs_dir / f".{version}.lock"  # the one `new` takes: no discard while it writes
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        raise MinimindError(f"a 'minimind new {version}' is in progress") from None
    trash = lab.runs_dir / f".discard-{version}-{os.getpid()}"
    moved: list[tuple[Path, Path]] = []
    removed = []
    with signals_held():
        try:
            trash.mkdir()
            for path in (run_dir, lab.record_path(version), lab.snapshot_path(version)):
                if path.exists():
                    target = trash / path.name
                    os.rename(path, target)
                    moved.append((path, target))
                    removed.append(str(path.relative_to(lab.root)))
            from lifecycle.knowledge.notebook import write_index

            if (lab.experiment_dir / "INDEX.md").exists():
                write_index(lab)  # the notebook no longer lists it
        except BaseException:
            for path, target in reversed(moved):
                os.rename(target, path)
            shutil.rmtree(trash, ignore_errors=True)
            raise
        finally:
            lock.unlink(missing_ok=True)
        shutil.rmtree(trash, ignore_errors=True)
    return f"Discarded drafted experiment {version}: removed {', '.join(removed)}"


def _discard_pending(lab: Lab, version: str, pending: Path) -> str:
    """A code change waiting for approval (runs/.pending/V) is the only thing of V: remove it,
    so that the next `new V` starts over. The living models/model.py never held it."""
    lock = lab.runs_dir / f".{version}.lock"
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        raise MinimindError(f"a 'minimind new {version}' is in progress") from None
    try:
        trash = lab.runs_dir / f".discard-{version}-{os.getpid()}"
        os.rename(pending, trash)  # one step: the candidate is either waiting or gone
        shutil.rmtree(trash, ignore_errors=True)
    finally:
        lock.unlink(missing_ok=True)
    return f"Discarded the code change of {version} that waited for approval: removed {pending.relative_to(lab.root)}"
