"""`minimind resume VERSION`: continue a drafted, stopped, lost or failed run from its last checkpoint."""

from __future__ import annotations

from minimind.errors import GateRefused, MinimindError
from minimind.lab import Lab
from minimind.rundir import CHECKPOINTS_DIR, LAST_CHECKPOINT, clear_exit_code, current, update_state


def resume_run(lab: Lab, version: str, force: bool = False) -> str:
    """Relaunch the run's pipeline; it continues from checkpoints/last.pth when there is one."""
    from lifecycle.launch import refresh_run_script, start_detached

    run_dir = lab.require_run(version)
    derived, state = current(run_dir)
    if derived in ("running", "queued"):
        where = f"Slurm job {state.slurm_job}" if state.backend == "slurm" else f"pid {state.pid}"
        raise MinimindError(f"experiment {version} is already {derived} ({where})")
    if derived == "finished":
        raise MinimindError(f"experiment {version} already finished; start a new experiment instead")
    if derived == "guardrail_stopped" and not force:
        raise GateRefused(f"experiment {version} was stopped by a guardrail ({state.stop_reason}); "
                          "resuming would continue a run that is cheating")
    from lifecycle.codechange import verify_at_launch

    verify_at_launch(lab, version)  # a code experiment runs only the code the human approved
    notes = refresh_run_script(lab, run_dir)
    has_checkpoint = (run_dir / CHECKPOINTS_DIR / LAST_CHECKPOINT).exists()
    clear_exit_code(run_dir)
    update_state(run_dir, state="running", stop_reason=None, train_outcome=None, phase="train")
    notes += _refresh_sbatch(lab, run_dir)
    info = start_detached(lab, run_dir, resume=has_checkpoint)
    how = "from its last checkpoint" if has_checkpoint else "from the start (no checkpoint yet)"
    where = f"Slurm job {info.slurm_job} (jobs so far: {', '.join(info.slurm_jobs)})" if info.backend == "slurm" \
        else f"pid {info.pid}"
    return "\n".join([*notes, f"Resumed experiment {version} {how}: {where}. Follow: minimind log {version} -f"])


def _refresh_sbatch(lab: Lab, run_dir) -> list[str]:
    """A Slurm run is resubmitted with the lab's current slurm: settings (a raised time limit, say)."""
    from lifecycle.slurm import write_sbatch
    from minimind.config import load_config
    from minimind.rundir import CONFIG_FILE

    cfg = load_config(run_dir / CONFIG_FILE)
    if cfg.launch.backend != "slurm":
        return []
    write_sbatch(lab, cfg, run_dir, run_dir)
    return [f"note: runs/{run_dir.name}/run.sbatch re-rendered from the lab's slurm: settings"]
