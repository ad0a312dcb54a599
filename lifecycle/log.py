"""`minimind log VERSION [-f]`: print the run's log, following it while the run is alive.

A Slurm job writes its output file to the same runs/V/train.log (lifecycle/slurm.py).
"""

from __future__ import annotations

import sys
import time

from minimind.errors import MinimindError
from minimind.lab import Lab
from minimind.rundir import TRAIN_LOG, current


def show_log(lab: Lab, version: str, follow: bool, lines: int) -> None:
    run_dir = lab.require_run(version)
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
