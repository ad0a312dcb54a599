"""Slurm as the cluster backend: the job script, submitting, cancelling, several nodes.

`launch.backend: slurm` makes `new` and `resume` render `runs/V/run.sbatch` from
`templates/run.sbatch.j2` (the lab's `slurm:` settings as `#SBATCH` lines, then the same
pipeline entry point as `run.sh`) and submit it with `sbatch --parsable`; state.json
keeps every job id the run has had. The job's output file is `runs/V/train.log`, so
`minimind log` reads it like a local run's. What the job is doing comes from Slurm's own
commands (`minimind.slurmq`, read by `rundir.current`); this module only writes to Slurm.

Signals: `stop` sends SIGTERM to the batch step and every job step (`scancel --full`),
so the pipeline notes the stop and the trainer checkpoints; a job still pending is simply
cancelled. `slurm.signal_lead_s` asks Slurm for SIGUSR1 to the pipeline that long before
the time limit; the pipeline passes it on as SIGTERM (which every launcher forwards),
so the run ends `stopped` at a fresh checkpoint, and with `slurm.requeue` it submits a
job that continues once this one has ended.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional

from minimind.config import ExperimentConfig
from minimind.errors import MinimindError, UsageError
from minimind.lab import Lab
from minimind.rundir import SBATCH_FILE, TRAIN_LOG, RunState, read_state, update_state

SBATCH_TEMPLATE = "run.sbatch.j2"
SUBMIT_TIMEOUT_S = 60
DEFAULT_PORT = 29500


def check_request(lab: Lab, cfg: ExperimentConfig) -> None:
    """Refuse at `new` what Slurm would refuse later, or what could not reach it."""
    slurm = lab.settings().slurm
    if cfg.launch.num_machines != slurm.nodes:
        raise UsageError(f"launch.num_machines is {cfg.launch.num_machines} but slurm.nodes is {slurm.nodes}; "
                         "set them equal (one accelerate launcher per node)")
    if shutil.which("sbatch") is None:
        raise MinimindError("launch.backend is slurm but sbatch is not on PATH (run minimind where Slurm's commands are)")


def render_sbatch(lab: Lab, cfg: ExperimentConfig, final_run_dir: Path) -> str:
    from lifecycle.running.scripts import script_context
    from lifecycle.document.render import render

    context = {**script_context(lab, cfg, final_run_dir), "slurm": lab.settings().slurm}
    return render(SBATCH_TEMPLATE, context, lab.templates_dir)


def write_sbatch(lab: Lab, cfg: ExperimentConfig, folder: Path, final_run_dir: Path) -> None:
    from lifecycle.running.scripts import write_checked_script

    write_checked_script(folder / SBATCH_FILE, render_sbatch(lab, cfg, final_run_dir))


def _call(argv: list[str], what: str, env: Optional[dict] = None) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=SUBMIT_TIMEOUT_S, env=env)
    except FileNotFoundError:
        raise MinimindError(f"{argv[0]} not found: is Slurm installed here?") from None
    except subprocess.TimeoutExpired:
        raise MinimindError(f"{what}: {argv[0]} did not answer within {SUBMIT_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise MinimindError(f"{what}: {argv[0]} failed: {detail[-1] if detail else f'exit {proc.returncode}'}")
    return proc.stdout.strip()


def submit(lab: Lab, run_dir: Path, resume: bool = False, after: Optional[str] = None) -> RunState:
    """sbatch runs/V/run.sbatch; records the job id (all ids are kept) and the state `queued`.

    `after`: a job id this one must wait for (a requeue from inside the job that ends).
    """
    from lifecycle.running.slots import QUEUED_AT_ENV

    script = run_dir / SBATCH_FILE
    env = dict(os.environ)
    env.pop("MINIMIND_RESUME", None)
    env.pop(QUEUED_AT_ENV, None)
    for name in [k for k in env if k.startswith("SLURM_")]:  # a requeue from inside a job: a fresh job
        env.pop(name)
    if resume:
        env["MINIMIND_RESUME"] = "1"
    argv = ["sbatch", "--parsable", f"--chdir={lab.root}", f"--output={run_dir / TRAIN_LOG}", "--open-mode=append"]
    if after:
        argv.append(f"--dependency=afterany:{after}")
    out = _call(argv + [str(script)], f"submitting experiment {run_dir.name}", env)
    job = out.splitlines()[-1].split(";")[0].strip()  # --parsable: "id" or "id;cluster"
    if not job.isdigit():
        raise MinimindError(f"sbatch answered {out!r}, not a job id")
    jobs = [j for j in read_state(run_dir).slurm_jobs if j != job] + [job]
    return update_state(run_dir, state="queued", backend="slurm", slurm_job=job, slurm_jobs=jobs, phase="queued",
                        pid=None, pgid=None, proc_start=None, started_at=time.time(), ended_at=None, exit_code=None,
                        heartbeat=None, stop_reason=None, gpus=None, queue_position=None, waiting_for=None)


def cancel(state: RunState, derived: str) -> None:
    """A pending job leaves the queue; a running one gets SIGTERM in every step (it checkpoints)."""
    job = state.slurm_job
    if derived == "queued":
        _call(["scancel", job], f"cancelling Slurm job {job}")
    else:
        _call(["scancel", "--signal=TERM", "--full", job], f"signalling Slurm job {job}")


def in_job() -> Optional[str]:
    """The Slurm job id when this process runs inside a job."""
    return os.environ.get("SLURM_JOB_ID") or None


def node_command(argv: list[str], nodes: int, port: int) -> list[str]:
    """One accelerate launcher per node through srun: machine rank from SLURM_NODEID, the main
    address from the first host of the job's node list (asked on the node that runs the batch step)."""
    head = _call(["scontrol", "show", "hostnames", os.environ.get("SLURM_JOB_NODELIST", "")], "reading the node list")
    main_host = head.splitlines()[0] if head else "localhost"
    own = {"--machine_rank", "--main_process_ip", "--main_process_port"}
    kept, skip = [], False
    for arg in argv:  # the per-node values replace any the launch settings put there
        if skip:
            skip = False
            continue
        if arg in own:
            skip = True
            continue
        kept.append(arg)
    at = kept.index("accelerate.commands.launch") + 1
    words = [shlex.quote(a) for a in kept[:at]]
    words += ['--machine_rank "$SLURM_NODEID"', f"--main_process_ip {shlex.quote(main_host)}",
              f"--main_process_port {int(port)}"]
    words += [shlex.quote(a) for a in kept[at:]]
    return ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "bash", "-c",
            "exec " + " ".join(words)]


def train_argv(cfg: ExperimentConfig, argv: list[str]) -> list[str]:
    """The training command inside a Slurm job: through srun when the job spans several nodes."""
    if in_job() is None or cfg.launch.num_machines == 1:
        return argv
    port = getattr(cfg.launch, "main_process_port", None) or DEFAULT_PORT
    return node_command(argv, cfg.launch.num_machines, port)
