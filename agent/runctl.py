"""Controlling a run after launch: log, stop, resume, eval.

`stop` signals only the run's own process group (recorded pgid, verified by the recorded
process start time), never processes found by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from minimind.errors import GateRefused, MinimindError, UsageError
from minimind.lab import Lab
from minimind.state import current, is_alive, update_state
from minimind.versions import parse


def _run_dir(lab: Lab, version: str) -> Path:
    parse(version)
    run_dir = lab.run_dir(version)
    if not (run_dir / "state.json").exists():
        raise MinimindError(f"no experiment {version} in {lab.root}")
    return run_dir


def show_log(lab: Lab, version: str, follow: bool, lines: int) -> None:
    run_dir = _run_dir(lab, version)
    path = run_dir / "train.log"
    if not path.exists():
        raise MinimindError(f"experiment {version} has no log yet (state: {current(run_dir)[0]})")
    with open(path, encoding="utf-8", errors="replace") as handle:
        content = handle.readlines()
        for line in content[-lines:] if lines else content:
            sys.stdout.write(line)
        sys.stdout.flush()
        while follow:
            line = handle.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
                continue
            if current(run_dir)[0] != "running":
                sys.stdout.write(handle.read())
                break
            time.sleep(0.5)


def stop_run(lab: Lab, version: str, timeout: int = 60) -> str:
    """SIGTERM to the run's process group; wait until the trainer has checkpointed and exited."""
    run_dir = _run_dir(lab, version)
    derived, state = current(run_dir)
    if derived != "running":
        raise MinimindError(f"experiment {version} is not running (state: {derived})")
    pgid = state.get("pgid")
    if not pgid or not is_alive(state.get("pid"), state.get("proc_start")):
        raise MinimindError(f"experiment {version} has no live process group to signal")
    try:
        os.killpg(int(pgid), signal.SIGTERM)
    except ProcessLookupError:
        raise MinimindError(f"experiment {version}'s process group {pgid} is gone") from None
    deadline = time.time() + timeout
    while time.time() < deadline:
        derived, state = current(run_dir)
        if derived != "running":
            return f"Experiment {version}: {derived} at step {state.get('step')} (checkpoint kept). Resume with: minimind resume {version}"
        time.sleep(0.5)
    raise MinimindError(f"experiment {version} did not stop within {timeout} s (it may be mid-evaluation); check 'minimind status {version}'")


def resume_run(lab: Lab, version: str, force: bool = False) -> str:
    """Relaunch a drafted, stopped, lost or failed run; it continues from its last checkpoint."""
    from agent.launch import clear_exit, start_detached

    run_dir = _run_dir(lab, version)
    derived, state = current(run_dir)
    if derived == "running":
        raise MinimindError(f"experiment {version} is already running (pid {state.get('pid')})")
    if derived == "finished":
        raise MinimindError(f"experiment {version} already finished; start a new experiment instead")
    if derived == "guardrail_stopped" and not force:
        raise GateRefused(f"experiment {version} was stopped by a guardrail ({state.get('stop_reason')}); "
                          "resuming would continue a run that is cheating")
    has_checkpoint = (run_dir / "checkpoints" / "last.pth").exists()
    clear_exit(run_dir)
    update_state(run_dir, state="running", stop_reason=None, train_outcome=None, phase="train")
    info = start_detached(lab, run_dir, resume=has_checkpoint)
    how = "from its last checkpoint" if has_checkpoint else "from the start (no checkpoint yet)"
    return f"Resumed experiment {version} {how}: pid {info['pid']}. Follow: minimind log {version} -f"


def evaluate(lab: Lab, version: Optional[str], num_samples: Optional[int], model_path: Optional[Path],
             model_type: Optional[str], sizes: Optional[dict[str, int]] = None) -> str:
    """Run the evaluator as a subprocess (it imports torch; the CLI does not)."""
    env = dict(os.environ, PYTHONSAFEPATH="1", MINIMIND_LAB=str(lab.root))
    if model_path is not None:
        if not model_type:
            raise UsageError("--model-path needs --model-type (e.g. model, model_original, model_1_4_8)")
        argv = [sys.executable, "-m", "training.evaluate", "--model-path", str(model_path), "--model-type", model_type,
                "--lab", str(lab.root)]
        for name, value in (sizes or {}).items():
            argv += [f"--{name}", str(value)]
        if version:
            argv += ["--run-dir", str(_run_dir(lab, version))]
    else:
        if not version:
            raise UsageError("give a VERSION, or --model-path with --model-type")
        run_dir = _run_dir(lab, version)
        if current(run_dir)[0] == "running":
            raise MinimindError(f"experiment {version} is still running; it evaluates itself when training ends")
        argv = [sys.executable, "-m", "training.evaluate", "--run-dir", str(run_dir)]
    if num_samples is not None:
        argv += ["--num-samples", str(num_samples)]
    result = subprocess.run(argv, cwd=lab.root, env=env)
    if result.returncode != 0:
        raise MinimindError(f"evaluation failed (exit {result.returncode}); see the messages above")
    if version and model_path is None:
        finish = subprocess.run([sys.executable, "-m", "agent.finish", "--run-dir", str(lab.run_dir(version)), "--analyse"],
                                cwd=lab.root, env=env)
        if finish.returncode != 0:
            raise MinimindError(f"analysis failed (exit {finish.returncode}); eval.json was written")
        return f"Evaluated and analysed {version}: runs/{version}/eval.json, experiment/experiment_{version}.md"
    return "Evaluation written."
