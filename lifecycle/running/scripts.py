"""What every run script (run.sh, and run.sbatch on Slurm) is rendered with and how it is
written: the environment it exports, the precision the launcher passes on, an atomic write
checked with `bash -n`. launch.py and slurm.py both render scripts; this module is what they
share, so neither imports the other for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from minimind.config import ExperimentConfig
from minimind.errors import MinimindError
from minimind.lab import Lab

# Seconds torchrun waits after forwarding a stop before it kills its workers: long enough
# for the step in progress, a periodic evaluation and the checkpoint.
SHUTDOWN_TIMEOUT_S = 900


def run_env(lab: Lab, cfg: ExperimentConfig) -> dict[str, str]:
    """Environment the run script exports (every value is shell-quoted by the template)."""
    env = {
        # The lab folder has models/ and templates/ folders without __init__.py; keep the
        # working directory off sys.path so they never shadow the installed packages.
        "PYTHONSAFEPATH": "1",
        "PYTHONUNBUFFERED": "1",
        "MINIMIND_LAB": str(lab.root),
        "ACCELERATE_MIXED_PRECISION": launch_precision(cfg),
    }
    if cfg.launch.cpu and cfg.launch.deepspeed:
        env["DS_ACCELERATOR"] = "cpu"  # accelerate's use_cpu would switch DeepSpeed off
    elif cfg.launch.cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    if cfg.launch.num_processes > 1:
        env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = str(SHUTDOWN_TIMEOUT_S)
    if cfg.launch.threads:
        env["OMP_NUM_THREADS"] = str(cfg.launch.threads)
        env["MKL_NUM_THREADS"] = str(cfg.launch.threads)
    return env


def launch_precision(cfg: ExperimentConfig) -> str:
    """The precision the launcher passes on: `auto` resolved on this machine (the other
    machines of a run are taken to be alike; each trainer resolves it again for its own
    device and passes it to accelerate, which wins over these values)."""
    from training.runtime import run_precision

    return run_precision(cfg)


def script_context(lab: Lab, cfg: ExperimentConfig, final_run_dir: Path) -> dict:
    """What every run-script template (run.sh, run.sbatch) is rendered with."""
    return {"version": cfg.version, "run_dir": str(final_run_dir), "lab_root": str(lab.root),
            "python": sys.executable, "env": run_env(lab, cfg)}


def write_checked_script(script: Path, text: str) -> None:
    """Write an executable script atomically; a template bug (bash -n) must not launch."""
    from minimind.atomic import write_text

    write_text(script, text)
    os.chmod(script, 0o755)
    check_syntax(script)


def check_syntax(script: Path) -> None:
    """`bash -n` the rendered script: a template bug must not launch."""
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise MinimindError(f"rendered run script has a syntax error: {result.stderr.strip().splitlines()[0]}")
