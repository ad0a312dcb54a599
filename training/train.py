"""Entry point of a training run: `python -m training.train --run-dir runs/V [--resume]`.

Run by the run script (through `accelerate launch` for several processes). Exit codes
(minimind.rundir): 0 trained, 10 stopped by a signal (checkpoint saved), 11 stopped by a
guardrail, 1 a MinimindError (one line on stderr), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

from minimind.errors import MinimindError
from minimind.rundir import CHECKPOINTS_DIR, CONFIG_FILE, LAST_CHECKPOINT


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path, help=f"runs/V: holds {CONFIG_FILE}; outputs go here")
    parser.add_argument("--resume", action="store_true", help=f"continue from {CHECKPOINTS_DIR}/{LAST_CHECKPOINT}")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    run_dir = args.run_dir.resolve()
    if not (run_dir / CONFIG_FILE).is_file():
        print(f"Error: {run_dir / CONFIG_FILE} not found", file=sys.stderr)
        return 1
    from training.loop import Trainer

    try:
        return Trainer(run_dir, resume=args.resume).run()
    except MinimindError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        _record_error(run_dir, str(exc))
        return exc.exit_code
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Leave the process group (DeepSpeed makes one even for a single process): NCCL warns
    of leaked resources at exit otherwise, as a ZeRO-2 run on an H200 showed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _record_error(run_dir: Path, message: str) -> None:
    from minimind.rundir import update_state

    try:
        update_state(run_dir, error=message, heartbeat=time.time())
    except OSError:
        pass  # the message is already on stderr; state.json is best effort here


if __name__ == "__main__":
    raise SystemExit(main())
