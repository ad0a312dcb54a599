"""Compatibility entry point for run scripts written before the pipeline moved to Python.

Run scripts rendered by minimind up to 0.1 (commit dc717c6) end with bash logic that calls

    python -m agent.finish --run-dir runs/V --outcome RC   # prints the training outcome
    python -m agent.finish --run-dir runs/V --stopped REASON
    python -m agent.finish --run-dir runs/V --analyse

A run started by such a script may still be training when the lab upgrades, so these
calls must keep working; they forward to `lifecycle.running.pipeline` and `lifecycle.running.analyse`.
This is the one module of `agent/` that reaches up into the lifecycle (the import-contract
test names it), and `minimind resume` replaces such scripts with the current one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from minimind.errors import MinimindError


def main(argv: Optional[list[str]] = None) -> int:
    from lifecycle.running import pipeline
    from lifecycle.running.analyse import run_analysis

    parser = argparse.ArgumentParser(prog="python -m agent.finish")
    parser.add_argument("--run-dir", required=True, type=Path)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--outcome", type=int, help="the training command's exit code")
    group.add_argument("--analyse", action="store_true")
    group.add_argument("--stopped", metavar="REASON", help="record a stop that came after training ended")
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    try:
        if args.outcome is not None:
            print(pipeline.record_outcome(run_dir, args.outcome), flush=True)
            pipeline.refresh_record(run_dir)
        elif args.stopped is not None:
            pipeline.mark_stopped(run_dir, args.stopped)
        else:
            ok, message = run_analysis(run_dir)
            print(("analysed: record " if ok else "analysis failed: ") + message, flush=True)
    except MinimindError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
