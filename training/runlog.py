"""train.log text: the provenance header and one plain progress line per log step.

The run script redirects stdout to train.log, so lines are plain text (no cursor
tricks) and flushed as written. Only rank 0 prints.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from minimind.rundir import CONFIG_FILE
from models.registry import sha256_file

BAR_WIDTH = 24


def say(line: str) -> None:
    print(line, flush=True)


def warn(line: str) -> None:
    say(f"WARNING {line}")


def git_commit(root: Path) -> tuple[Optional[str], Optional[bool]]:
    """(HEAD commit, dirty) of the lab, or (None, None) when it is not a git repo."""
    def git(*args: str) -> Optional[str]:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if head is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return head, bool(status) if status is not None else None


def sha256_of(path: Path) -> Optional[str]:
    try:
        return sha256_file(path)
    except OSError:
        return None


def header(lab_root: Path, module_path: Path, config_text: str, device: str, processes: int,
           resume_step: Optional[int]) -> None:
    import accelerate
    import torch

    commit, dirty = git_commit(lab_root)
    say(f"=== minimind training {time.strftime('%Y-%m-%d %H:%M:%S')} ===")
    say(f"git commit: {commit or 'not a git repository'}" + (" (dirty)" if dirty else ""))
    say(f"model module: {module_path.stem} sha256 {sha256_of(module_path) or 'unreadable'}")
    say(f"versions: python {platform.python_version()} torch {torch.__version__} accelerate {accelerate.__version__}")
    say(f"device: {device}  processes: {processes}  command: {' '.join(sys.argv)}")
    if resume_step is not None:
        say(f"resuming from step {resume_step}")
    say(f"--- resolved config ({CONFIG_FILE}) ---")
    for line in config_text.rstrip().splitlines():
        say(line)
    say("---")


def fmt_duration(seconds: Optional[float]) -> str:
    if seconds is None or seconds != seconds:
        return "--:--:--"
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{s:02d}"


def progress_line(step: int, total: int, row: dict[str, Any], eta_s: Optional[float]) -> str:
    frac = step / total if total else 1.0
    filled = int(round(frac * BAR_WIDTH))
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    return (f"step {step}/{total} [{bar}] {100 * frac:5.1f}% loss {row['loss']:.4f} "
            f"lr {row['lr']:.2e} {row['tokens_per_s']:,.0f} tok/s "
            f"elapsed {fmt_duration(row['elapsed_s'])} ETA {fmt_duration(eta_s)}")
