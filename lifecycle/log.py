"""`minimind log VERSION [-f]`: print the run's log, following it while the run is alive.

A Slurm job writes its output file to the same runs/V/train.log (lifecycle/running/slurm.py).
"""

from __future__ import annotations

import sys
import time

from minimind.errors import MinimindError
from minimind.lab import Lab
from minimind.rundir import TRAIN_LOG, current, run_label


def show_log(lab: Lab, name: str, follow: bool, lines: int) -> None:
    """`name` V@SEED: that replicate's log. V of a replicated experiment: each replicate's log under
    a header line; with -f, the first replicate still running or waiting (the others follow it)."""
    from lifecycle.knowledge.replicates import target

    version, runs, one = target(lab, name)
    if one or len(runs) == 1:
        _show_one(runs[0], version, follow, lines)
        return
    if follow:
        live = [r for r in runs if current(r)[0] in ("running", "queued")]
        pick = live[0] if live else runs[-1]
        sys.stdout.write(f"== {run_label(pick)} (of {len(runs)} replicates; minimind log {version}@SEED for one) ==\n")
        _show_one(pick, version, follow, lines)
        return
    for run_dir in runs:
        sys.stdout.write(f"== {run_label(run_dir)} ==\n")
        if (run_dir / TRAIN_LOG).exists():
            _show_one(run_dir, version, False, lines)
        else:
            sys.stdout.write(f"(no log yet: {current(run_dir)[0]})\n")
    sys.stdout.flush()


def _show_one(run_dir, version: str, follow: bool, lines: int) -> None:
    path = run_dir / TRAIN_LOG
    if not path.exists():
        raise MinimindError(f"experiment {version} has no log yet (state: {current(run_dir)[0]})")
    with open(path, encoding="utf-8", errors="replace") as handle:
        content = handle.readlines()
        for line in content[-lines:] if lines else content:
            sys.stdout.write(line)
        sys.stdout.flush()
        while follow:
            line = handle.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
                continue
            if current(run_dir)[0] not in ("running", "queued"):
                sys.stdout.write(handle.read())
                break
            time.sleep(0.5)
