"""Launching runs: the training command, the run script, and the detached start.

One process runs the trainer directly (it builds its own `Accelerator`, so `minimind stop`'s
SIGTERM reaches the trainer and nothing in between); several go through
`accelerate launch`, whose launcher forwards signals to its workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from minimind.config import ExperimentConfig
from minimind.errors import MinimindError
from minimind.lab import Lab
from minimind.state import process_start_time, update_state

ZERO2 = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "bf16": {"enabled": "auto"},
    "fp16": {"enabled": "auto"},
    "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True,
                          "reduce_scatter": True, "allgather_bucket_size": 5e8, "reduce_bucket_size": 5e8},
}


def run_env(lab: Lab, cfg: ExperimentConfig) -> dict[str, str]:
    """Environment the run script exports (every value is shell-quoted by the template)."""
    env = {
        # The lab folder has models/ and templates/ folders without __init__.py; keep the
        # working directory off sys.path so they never shadow the installed packages.
        "PYTHONSAFEPATH": "1",
        "PYTHONUNBUFFERED": "1",
        "MINIMIND_LAB": str(lab.root),
        "ACCELERATE_MIXED_PRECISION": cfg.launch.mixed_precision,
    }
    if cfg.launch.cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    if cfg.launch.threads:
        env["OMP_NUM_THREADS"] = str(cfg.launch.threads)
        env["MKL_NUM_THREADS"] = str(cfg.launch.threads)
    return env


def train_command(lab: Lab, cfg: ExperimentConfig, run_dir: Path) -> list[str]:
    python = sys.executable
    target = ["-m", "training.train", "--run-dir", str(run_dir)]
    launch = cfg.launch
    if launch.num_processes == 1 and launch.num_machines == 1 and not launch.deepspeed:
        return [python, *target]
    argv = [python, "-m", "accelerate.commands.launch", "--num_processes", str(launch.num_processes),
            "--num_machines", str(launch.num_machines), "--mixed_precision", launch.mixed_precision]
    if launch.num_processes > 1:
        argv.append("--multi_gpu")
    if launch.deepspeed:
        ds_path = run_dir / "ds_config.json" if launch.deepspeed == "zero2" else lab.resolve(launch.deepspeed)
        argv += ["--use_deepspeed", "--deepspeed_config_file", str(ds_path)]
    return argv + target


def write_deepspeed_config(cfg: ExperimentConfig, run_dir: Path) -> None:
    if cfg.launch.deepspeed == "zero2":
        from minimind.atomic import write_json

        write_json(run_dir / "ds_config.json", ZERO2)


def render_run_script(lab: Lab, cfg: ExperimentConfig, run_dir: Path, final_run_dir: Path) -> str:
    """The run script text; paths point at the final run directory, not the staging one."""
    from agent.render import render

    context = {
        "version": cfg.version,
        "run_dir": str(final_run_dir),
        "lab_root": str(lab.root),
        "python": sys.executable,
        "env": run_env(lab, cfg),
        "train_cmd": train_command(lab, cfg, final_run_dir),
    }
    return render("run.sh.j2", context, lab.templates_dir)


def check_syntax(script: Path) -> None:
    """`bash -n` the rendered script: a template bug must not launch."""
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise MinimindError(f"rendered run script has a syntax error: {result.stderr.strip().splitlines()[0]}")


def start_detached(lab: Lab, run_dir: Path, resume: bool = False) -> dict:
    """Start `run.sh` with nohup in its own session and process group; record pid and start time.

    A double fork makes the run a child of init, so the CLI (or a test process) that
    launched it never leaves a zombie that would look alive.
    """
    script = run_dir / "run.sh"
    log_path = run_dir / "train.log"
    env = dict(os.environ)
    env.pop("MINIMIND_RESUME", None)
    if resume:
        env["MINIMIND_RESUME"] = "1"
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # intermediate child: start the run, report its pid, vanish
        code = 0
        try:
            os.close(read_fd)
            with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
                proc = subprocess.Popen(["nohup", "bash", str(script)], cwd=lab.root, stdin=devnull, stdout=log,
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True, close_fds=True)
            os.write(write_fd, str(proc.pid).encode())
        except BaseException:  # noqa: BLE001 - the child must never return into the caller's code
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    os.waitpid(child, 0)
    raw = os.read(read_fd, 64)
    os.close(read_fd)
    if not raw:
        raise MinimindError(f"could not start {script}")
    pid = int(raw)
    started = process_start_time(pid)
    now = time.time()
    info = {"state": "running", "pid": pid, "pgid": pid, "proc_start": started, "started_at": now,
            "ended_at": None, "heartbeat": now, "exit_code": None, "stop_reason": None}
    update_state(run_dir, **info)
    return info


def clear_exit(run_dir: Path) -> None:
    for name in ("exit_code", "exit_code.tmp"):
        try:
            (run_dir / name).unlink()
        except FileNotFoundError:
            pass


def load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
