"""`minimind resume VERSION`: continue a drafted, stopped, lost or failed run from its last checkpoint.

The checkpoint is read and checked against the run's config before anything is relaunched
(readable, written by this run's module, with as many processes, DeepSpeed or not, every
rank's file present): a resume that would fail at its first step is refused here instead of
being reported as resumed.
"""

from __future__ import annotations

import time
from pathlib import Path

from minimind.errors import GateRefused, MinimindError
from minimind.lab import Lab
from minimind.rundir import (CHECKPOINTS_DIR, CONFIG_FILE, LAST_CHECKPOINT, MISSING, UNREADABLE, clear_exit_code, current,
                             experiment_dir, is_alive, run_label, state_note, update_state)

# A stopped run's pipeline records `stopped` and then, as its last act, its exit code. A resume
# in between would have that late exit code mark the resumed run failed: wait this long for it.
ENDING_WAIT_S = 30.0


def resume_run(lab: Lab, name: str, force: bool = False) -> str:
    """Resume `name`: one replicate (V@SEED), or of an experiment every replicate that is not done
    (a lost replicate is continued alone; the finished ones are left as they are)."""
    from lifecycle.knowledge.replicates import DONE, target

    version, runs, one = target(lab, name)
    if one or len(runs) == 1:
        return _resume_one(lab, runs[0], name, force)
    states = [(r, current(r)[0]) for r in runs]
    todo = [r for r, derived in states if derived not in DONE and derived not in ("running", "queued")]
    if not todo:
        busy = [run_label(r) for r, derived in states if derived in ("running", "queued")]
        if busy:
            raise MinimindError(f"experiment {version}: no replicate to resume ({', '.join(busy)} still running or queued)")
        raise MinimindError(f"experiment {version} already finished (all {len(runs)} replicates); "
                            f"add replicates with: minimind replicate {version} --seeds {len(runs) + 1}")
    return "\n".join(_resume_one(lab, r, run_label(r), force) for r in todo)


def _resume_one(lab: Lab, run_dir: Path, version: str, force: bool = False) -> str:
    """Relaunch the run's pipeline; it continues from checkpoints/last.pth when there is one."""
    from lifecycle.running.launch import refresh_run_script, start_detached

    derived, state = current(run_dir)
    if derived in ("running", "queued"):
        where = f"Slurm job {state.slurm_job}" if state.backend == "slurm" else f"pid {state.pid}"
        raise MinimindError(f"experiment {version} is already {derived} ({where})")
    if derived == "finished":
        raise MinimindError(f"experiment {version} already finished; start a new experiment instead")
    if derived in (MISSING, UNREADABLE):
        raise MinimindError(f"experiment {version} cannot be resumed: {state_note(run_dir)}")
    if derived == "guardrail_stopped" and not force:
        raise GateRefused(f"experiment {version} was stopped by a guardrail ({state.stop_reason}); "
                          "resuming would continue a run that is cheating")
    if state.backend != "slurm" and is_alive(state.pid, state.proc_start):
        deadline = time.time() + ENDING_WAIT_S
        while is_alive(state.pid, state.proc_start) and time.time() < deadline:
            time.sleep(0.2)
        if is_alive(state.pid, state.proc_start):
            raise MinimindError(f"experiment {version} is {derived} but its pipeline (pid {state.pid}) is still ending; "
                                "resume it in a moment")
    from lifecycle.code.codechange import verify_at_launch

    verify_at_launch(lab, experiment_dir(run_dir).name)  # a code experiment runs only the code the human approved
    has_checkpoint = (run_dir / CHECKPOINTS_DIR / LAST_CHECKPOINT).exists()
    step = check_checkpoint(lab, run_dir) if has_checkpoint else None  # before anything is written
    notes = refresh_run_script(lab, run_dir)
    clear_exit_code(run_dir)
    update_state(run_dir, state="running", stop_reason=None, train_outcome=None, phase="train")
    notes += _refresh_sbatch(lab, run_dir)
    info = start_detached(lab, run_dir, resume=has_checkpoint)
    how = f"from its last checkpoint (step {step})" if has_checkpoint else "from the start (no checkpoint yet)"
    where = f"Slurm job {info.slurm_job} (jobs so far: {', '.join(info.slurm_jobs)})" if info.backend == "slurm" \
        else f"pid {info.pid}"
    return "\n".join([*notes, f"Resumed experiment {version} {how}: {where}. Follow: minimind log {version} -f"])


def check_checkpoint(lab: Lab, run_dir: Path) -> int:
    """The step checkpoints/last.pth resumes from, after checking it can: MinimindError naming what is wrong."""
    from minimind.config import load_config
    from models.registry import read_checkpoint
    from training import checkpoint as ckpt

    ckpt_dir = run_dir / CHECKPOINTS_DIR
    path = ckpt_dir / LAST_CHECKPOINT
    where = path.relative_to(lab.root)
    data = read_checkpoint(path)  # one-line error for a truncated or corrupt file
    cfg = load_config(run_dir / CONFIG_FILE)
    problems = []
    if not isinstance(data.get("step"), int):
        problems.append("it records no step")
    if data.get("module") != cfg.model_module:
        problems.append(f"it was written by module {data.get('module')}, {CONFIG_FILE} says {cfg.model_module}")
    written_by = ckpt.processes_of(data)
    if written_by != cfg.launch.num_processes:
        problems.append(f"it was written by {written_by} process(es) and launch.num_processes is "
                        f"{cfg.launch.num_processes}")
    if bool(data.get("deepspeed")) != bool(cfg.launch.deepspeed):
        problems.append(f"it was written {'with' if data.get('deepspeed') else 'without'} DeepSpeed and "
                        f"launch.deepspeed is {cfg.launch.deepspeed}")
    tag = data.get("tag")
    if tag:
        absent = [ckpt.rank_file(ckpt_dir, r, tag).name for r in range(1, written_by)
                  if not ckpt.rank_file(ckpt_dir, r, tag).is_file()]
        if data.get("deepspeed") and not (ckpt_dir / ckpt.DEEPSPEED_DIR / tag).is_dir():
            absent.append(f"{ckpt.DEEPSPEED_DIR}/{tag}/")
        if absent:
            problems.append(f"its companion files are missing: {', '.join(absent)}")
    if problems:
        raise MinimindError(f"{where} cannot be resumed: {'; '.join(problems)}")
    return data["step"]


def _refresh_sbatch(lab: Lab, run_dir) -> list[str]:
    """A Slurm run is resubmitted with the lab's current slurm: settings (a raised time limit, say)."""
    from lifecycle.running.slurm import write_sbatch
    from minimind.config import load_config

    cfg = load_config(run_dir / CONFIG_FILE)
    if cfg.launch.backend != "slurm":
        return []
    write_sbatch(lab, cfg, run_dir, run_dir)
    return [f"note: runs/{run_dir.name}/run.sbatch re-rendered from the lab's slurm: settings"]
