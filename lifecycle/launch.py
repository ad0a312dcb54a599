"""Launching runs: the training command, the run script, and the detached start.

The run script only sets up the environment and execs the pipeline
(`lifecycle.pipeline`), which builds the training command from here at run time. One
process runs the trainer directly (it builds its own `Accelerator`, so `minimind stop`'s
SIGTERM reaches the trainer and nothing in between); several go through
`accelerate launch`, whose launcher forwards signals to its workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from minimind.config import ExperimentConfig
from minimind.errors import MinimindError
from minimind.lab import Lab
from minimind.rundir import (DS_CONFIG_FILE, RUN_SCRIPT, TRAIN_LOG, RunState, process_start_time,
                             update_state)

RUN_TEMPLATE = "run.sh.j2"
# Run-script templates of minimind <= 0.1 ran the end-of-run steps in bash through this
# module; a lab copy that still does is upgraded (kept beside as .legacy).
LEGACY_TEMPLATE_MARK = "agent.finish"

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
        ds_path = run_dir / DS_CONFIG_FILE if launch.deepspeed == "zero2" else lab.resolve(launch.deepspeed)
        argv += ["--use_deepspeed", "--deepspeed_config_file", str(ds_path)]
    return argv + target


def write_deepspeed_config(cfg: ExperimentConfig, run_dir: Path) -> None:
    if cfg.launch.deepspeed == "zero2":
        from minimind.atomic import write_json

        write_json(run_dir / DS_CONFIG_FILE, ZERO2)


def upgrade_legacy_template(lab: Lab) -> list[str]:
    """Replace a lab's pre-pipeline run-script template; returns what it says to the user."""
    import shutil

    from lifecycle.render import PACKAGE_TEMPLATES

    lab_copy = lab.templates_dir / RUN_TEMPLATE
    if not lab_copy.is_file() or LEGACY_TEMPLATE_MARK not in lab_copy.read_text(encoding="utf-8"):
        return []
    kept = lab_copy.with_name(RUN_TEMPLATE + ".legacy")
    os.replace(lab_copy, kept)
    shutil.copyfile(PACKAGE_TEMPLATES / RUN_TEMPLATE, lab_copy)
    return [f"note: templates/{RUN_TEMPLATE} ran the end-of-run steps in bash (minimind <= 0.1); it now hands "
            f"over to the Python pipeline. Upgraded it; your copy is templates/{kept.name} (carry over any "
            "environment lines you added)."]


def render_run_script(lab: Lab, cfg: ExperimentConfig, final_run_dir: Path) -> str:
    """The run script text; paths point at the final run directory, not the staging one."""
    from lifecycle.render import render

    context = {
        "version": cfg.version,
        "run_dir": str(final_run_dir),
        "lab_root": str(lab.root),
        "python": sys.executable,
        "env": run_env(lab, cfg),
    }
    return render(RUN_TEMPLATE, context, lab.templates_dir)


def write_run_script(lab: Lab, cfg: ExperimentConfig, folder: Path, final_run_dir: Path) -> None:
    script = folder / RUN_SCRIPT
    from minimind.atomic import write_text

    write_text(script, render_run_script(lab, cfg, final_run_dir))
    os.chmod(script, 0o755)
    check_syntax(script)
    if cfg.launch.backend == "slurm":
        from lifecycle.slurm import write_sbatch

        write_sbatch(lab, cfg, folder, final_run_dir)


def refresh_run_script(lab: Lab, run_dir: Path) -> list[str]:
    """Before a resume: a run script that still runs the old bash pipeline is rewritten."""
    from minimind.config import load_config
    from minimind.rundir import CONFIG_FILE

    script = run_dir / RUN_SCRIPT
    if script.is_file() and LEGACY_TEMPLATE_MARK not in script.read_text(encoding="utf-8"):
        return []
    notes = upgrade_legacy_template(lab)
    write_run_script(lab, load_config(run_dir / CONFIG_FILE), run_dir, run_dir)
    return notes + [f"note: runs/{run_dir.name}/{RUN_SCRIPT} predates the Python pipeline; re-rendered it "
                    f"(it now runs python -m lifecycle.pipeline)."]


def check_syntax(script: Path) -> None:
    """`bash -n` the rendered script: a template bug must not launch."""
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise MinimindError(f"rendered run script has a syntax error: {result.stderr.strip().splitlines()[0]}")


def check_launch(lab: Lab, cfg: ExperimentConfig) -> None:
    """Before anything is launched: GPU slots the run could never get, a Slurm job Slurm would refuse."""
    if cfg.launch.backend == "slurm":
        from lifecycle.slurm import check_request

        check_request(lab, cfg)
    else:
        from lifecycle.slots import check_request

        check_request(cfg)


def launched_message(info: RunState, version: str) -> str:
    if info.backend == "slurm":
        return f"Submitted: Slurm job {info.slurm_job}. Follow: minimind log {version} -f · minimind status"
    return f"Launched: pid {info.pid} (process group {info.pgid}). Follow: minimind log {version} -f · minimind status"


def start_detached(lab: Lab, run_dir: Path, resume: bool = False) -> RunState:
    """Start `run.sh` with nohup in its own session and process group; record pid and start time.

    A double fork makes the run a child of init, so the CLI (or a test process) that
    launched it never leaves a zombie that would look alive. With `launch.backend: slurm`
    the run is submitted as a Slurm job instead (lifecycle/slurm.py). In a lab with GPU
    slots the run starts `queued`; its pipeline takes the slots (or waits) in launch order.
    """
    from lifecycle import slots
    from minimind.config import load_config
    from minimind.rundir import CONFIG_FILE

    cfg = load_config(run_dir / CONFIG_FILE)
    if cfg.launch.backend == "slurm":
        from lifecycle.slurm import submit

        return submit(lab, run_dir, resume)
    script = run_dir / RUN_SCRIPT
    log_path = run_dir / TRAIN_LOG
    env = dict(os.environ)
    env.pop("MINIMIND_RESUME", None)
    if resume:
        env["MINIMIND_RESUME"] = "1"
    env[slots.QUEUED_AT_ENV] = str(time.time_ns())  # the run's place in the slot queue: launch order
    # The state is written before the start: the pipeline may take its slots (and say so) at once.
    now = time.time()
    update_state(run_dir, state="running" if slots.slot_ids(cfg) is None else "queued", started_at=now, ended_at=None,
                 heartbeat=now, exit_code=None, stop_reason=None, gpus=None, queue_position=None, waiting_for=None)
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
    return update_state(run_dir, pid=pid, pgid=pid, proc_start=started)
