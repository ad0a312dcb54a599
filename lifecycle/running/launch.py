"""Launching runs: the training command, the run script, and the detached start.

The run script only sets up the environment and execs the pipeline
(`lifecycle.running.pipeline`), which builds the training command from here at run time. One
process runs the trainer directly (it builds its own `Accelerator`, DeepSpeed included, so
`minimind stop`'s SIGTERM reaches the trainer and nothing in between); several go through
`accelerate launch`, whose launcher forwards signals to its workers and, with
TORCH_ELASTIC_SHUTDOWN_TIMEOUT, gives them time to checkpoint. Workers also poll
runs/V/stop, which reaches every rank on every node. The launcher only starts processes:
accumulation, precision and DeepSpeed come from the trainer's own config
(`training.runtime.make_accelerator`), and `--config_file` names the run's own
accelerate config so a user's default_config.yaml cannot change the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from minimind.config import ExperimentConfig
from minimind.errors import MinimindError
from minimind.lab import Lab
from minimind.rundir import (ACCELERATE_CONFIG_FILE, NODE_COMMANDS_FILE, RUN_SCRIPT, STOP_FILE, TRAIN_LOG, RunState,
                             process_start_time, update_state)
from lifecycle.running.scripts import launch_precision, run_env, script_context, write_checked_script

RUN_TEMPLATE = "run.sh.j2"
# Run-script templates of minimind <= 0.1 ran the end-of-run steps in bash through this
# module; a lab copy that still does is upgraded (kept beside as .legacy).
LEGACY_TEMPLATE_MARK = "agent.finish"



def distributed(cfg: ExperimentConfig) -> bool:
    return cfg.launch.num_processes > 1 or cfg.launch.num_machines > 1


def accelerate_config(cfg: ExperimentConfig) -> dict:
    """The run's accelerate config file: the same values as the command line, nothing else."""
    launch = cfg.launch
    out = {"compute_environment": "LOCAL_MACHINE", "debug": False,
           "distributed_type": "MULTI_CPU" if launch.cpu else "MULTI_GPU",
           "mixed_precision": launch_precision(cfg), "num_machines": launch.num_machines,
           "num_processes": launch.num_processes, "machine_rank": 0, "use_cpu": launch.cpu,
           "main_training_function": "main", "rdzv_backend": "static", "same_network": True}
    if launch.num_machines > 1:
        out.update(main_process_ip=launch.main_process_ip, main_process_port=launch.main_process_port)
    return out


def train_command(lab: Lab, cfg: ExperimentConfig, run_dir: Path, machine_rank: int = 0) -> list[str]:
    """The trainer's command line on machine `machine_rank` (0: the main node, where the pipeline runs)."""
    python = sys.executable
    target = ["-m", "training.train", "--run-dir", str(run_dir)]
    launch = cfg.launch
    if not distributed(cfg):
        return [python, *target]
    argv = [python, "-m", "accelerate.commands.launch", "--config_file", str(run_dir / ACCELERATE_CONFIG_FILE),
            "--multi_gpu", "--num_processes", str(launch.num_processes), "--num_machines", str(launch.num_machines),
            "--mixed_precision", launch_precision(cfg)]
    if launch.num_machines > 1:
        argv += ["--machine_rank", str(machine_rank), "--main_process_ip", str(launch.main_process_ip),
                 "--main_process_port", str(launch.main_process_port)]
    elif launch.main_process_port:
        argv += ["--main_process_port", str(launch.main_process_port)]
    return argv + target


def node_commands(lab: Lab, cfg: ExperimentConfig, run_dir: Path) -> str:
    """What each other machine runs (printed by `new`, kept as runs/V/nodes.sh)."""
    import shlex

    lines = [f"# experiment {cfg.version}: {cfg.launch.num_machines} machines, {cfg.launch.num_processes} processes "
             "in all. Run line k on machine k (same lab path, shared filesystem), after this machine "
             "has started; append --resume when the run is resumed."]
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in run_env(lab, cfg).items())
    for rank in range(1, cfg.launch.num_machines):
        argv = " ".join(shlex.quote(a) for a in train_command(lab, cfg, run_dir, machine_rank=rank))
        lines.append(f"cd {shlex.quote(str(lab.root))} && env {env} {argv}")
    return "\n".join(lines) + "\n"


def write_launch_files(lab: Lab, cfg: ExperimentConfig, folder: Path, final_run_dir: Path) -> list[str]:
    """At `new`: check a user's DeepSpeed JSON against the run, write the accelerate config and,
    for several machines, the other nodes' commands; returns what to tell the user."""
    import yaml

    from minimind.atomic import write_text
    from training.runtime import require_deepspeed, user_deepspeed_json

    require_deepspeed(cfg)  # refuses a DeepSpeed that casts buffers
    user_deepspeed_json(cfg, lab.root)  # refuses ZeRO-3 and values that contradict the run
    if not distributed(cfg):
        return []
    write_text(folder / ACCELERATE_CONFIG_FILE, yaml.safe_dump(accelerate_config(cfg), sort_keys=False))
    if cfg.launch.num_machines == 1:
        return []
    text = node_commands(lab, cfg, final_run_dir)
    write_text(folder / NODE_COMMANDS_FILE, text)
    return [f"other machines: run these (kept in runs/{cfg.version}/{NODE_COMMANDS_FILE}):", *text.splitlines()[1:]]


def ensure_launch_files(lab: Lab, cfg: ExperimentConfig, run_dir: Path) -> None:
    """Before the trainer starts (the pipeline): the accelerate config of a run made before it
    existed, and the token cache built here, once, so no rank waits for it inside a collective
    with a timeout."""
    import yaml

    from minimind.atomic import write_text

    if not distributed(cfg):
        return
    if not (run_dir / ACCELERATE_CONFIG_FILE).exists():
        write_text(run_dir / ACCELERATE_CONFIG_FILE, yaml.safe_dump(accelerate_config(cfg), sort_keys=False))
    from training.runtime import prepare_caches

    prepare_caches(lab, cfg)


def upgrade_legacy_template(lab: Lab) -> list[str]:
    """Replace a lab's pre-pipeline run-script template; returns what it says to the user."""
    from lifecycle.document.render import PACKAGE_TEMPLATES

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
    from lifecycle.document.render import render

    return render(RUN_TEMPLATE, script_context(lab, cfg, final_run_dir), lab.templates_dir)


def write_run_script(lab: Lab, cfg: ExperimentConfig, folder: Path, final_run_dir: Path) -> None:
    write_checked_script(folder / RUN_SCRIPT, render_run_script(lab, cfg, final_run_dir))
    if cfg.launch.backend == "slurm":
        from lifecycle.running.slurm import write_sbatch

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
                    f"(it now runs python -m lifecycle.running.pipeline)."]


def check_launch(lab: Lab, cfg: ExperimentConfig) -> None:
    """Before anything is launched: GPU slots the run could never get, a Slurm job Slurm would refuse."""
    if cfg.launch.backend == "slurm":
        from lifecycle.running.slurm import check_request

        check_request(lab, cfg)
    else:
        from lifecycle.running.slots import check_request

        check_request(cfg)


def launched_message(info: RunState, version: str) -> str:
    if info.backend == "slurm":
        return f"Submitted: Slurm job {info.slurm_job}. Follow: minimind log {version} -f · minimind status"
    return f"Launched: pid {info.pid} (process group {info.pgid}). Follow: minimind log {version} -f · minimind status"


def start_detached(lab: Lab, run_dir: Path, resume: bool = False) -> RunState:
    """Start `run.sh` with nohup in its own session and process group; record pid and start time.

    A double fork makes the run a child of init, so the CLI (or a test process) that
    launched it never leaves a zombie that would look alive. With `launch.backend: slurm`
    the run is submitted as a Slurm job instead (lifecycle/running/slurm.py). In a lab with GPU
    slots the run starts `queued`; its pipeline takes the slots (or waits) in launch order.
    """
    from lifecycle.running import slots
    from minimind.config import load_config
    from minimind.rundir import CONFIG_FILE

    cfg = load_config(run_dir / CONFIG_FILE)
    (run_dir / STOP_FILE).unlink(missing_ok=True)  # a stop request belongs to the run it stopped
    if cfg.launch.backend == "slurm":
        from lifecycle.running.slurm import submit

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
    from lifecycle.running.slots import private_queue

    waits = slots.slot_ids(cfg) is not None or private_queue(cfg, run_dir) is not None
    update_state(run_dir, state="queued" if waits else "running", started_at=now, ended_at=None,
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


# --- replicates (lifecycle/knowledge/replicates.py): more run directories of one experiment -------------

def create_replicates(lab: Lab, version: str, total: int) -> list[Path]:
    """Write the run directories that bring V to `total` replicates (drafted, not launched)."""
    from lifecycle.document.gitops import ensure_gitignore
    from lifecycle.knowledge.replicates import next_seeds, replicate_config, seed_of
    from minimind.atomic import write_text
    from minimind.config import dump_config, load_config
    from minimind.rundir import CONFIG_FILE, REPLICATES_DIR, read_state, replicate_dirs

    ensure_gitignore(lab)  # a lab made before replicates: their checkpoints and state stay out of git
    exp_dir = lab.require_run(version)
    cfg = load_config(exp_dir / CONFIG_FILE)
    have = [s for s in (seed_of(p) for p in replicate_dirs(exp_dir)) if s is not None]
    main = read_state(exp_dir)
    made = []
    for seed in next_seeds(cfg.train.seed, have, total):
        run_dir = exp_dir / REPLICATES_DIR / str(seed)
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a half-written one from an interrupted create (it has no config)
        rcfg = replicate_config(cfg, seed)
        try:
            run_dir.mkdir(parents=True)
            write_text(run_dir / CONFIG_FILE, dump_config(rcfg))
            write_run_script(lab, rcfg, run_dir, run_dir)
            write_launch_files(lab, rcfg, run_dir, run_dir)
            update_state(run_dir, version=version, base=cfg.base, state="drafted", stage=cfg.stage,
                         init=main.init, snapshot=main.snapshot, git=main.git, agent_backend=main.agent_backend)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        made.append(run_dir)
    return made


def launch_replicates(lab: Lab, run_dirs: list[Path]) -> list[RunState]:
    """Start each replicate's pipeline, in seed order (the queue's order)."""
    return [start_detached(lab, run_dir) for run_dir in run_dirs]
