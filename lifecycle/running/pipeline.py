"""The run pipeline: what happens to an experiment from launch to its drafted commit.

    python -m lifecycle.running.pipeline --run-dir runs/V [--resume]

`runs/V/run.sh` exports the lab's environment and `exec`s this, so a fix here reaches
every lab and every run script already written. In order:

1. train   `python -m training.train` (through `accelerate launch` for several processes),
           as a child in this process group; the record's execution section is
           re-rendered every RECORD_REFRESH_S while it trains (here, never in the trainer).
2. outcome finished / stopped / guardrail_stopped / failed, from the trainer's own record
           in state.json and its exit code (`accelerate launch` reports any worker's
           failure as 1).
3. evaluate `python -m training.evaluate` (a child: torch's memory is freed when it ends).
4. analyse verdict, the agent's prose, the commit draft, the record. Any failure here (an API
           error, or an unexpected exception: its traceback goes to runs/V/analysis_error.log)
           leaves the training state and sets `analysis_failed` (`minimind analyse V` redoes it).

Before training, a lab with GPU slots (`launch.gpus`) has this process take its slots or
wait for them, `queued` (lifecycle/running/slots.py); the slots are exported as
CUDA_VISIBLE_DEVICES and held until the run ends. Inside a Slurm job, SIGUSR1 (the time
limit is near, lifecycle/running/slurm.py) is passed to the trainer as SIGTERM.

`minimind stop` signals the whole process group: the trainer checkpoints and exits, and
this process only notes the request. A stop that arrives as training ends, or during
evaluation or analysis, keeps the trained checkpoint and ends the run `stopped`, so
`resume` finishes it. The exit status is written to `exit_code` as the last act; a run
killed with -9 leaves none, which is how `status` tells `lost`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from minimind.config import load_config
from minimind.errors import MinimindError
from minimind.lab import Lab
from minimind.rundir import (CONFIG_FILE, EXIT_STOPPED, FINAL_BY_TRAINER, PLAN_FILE, clear_exit_code, read_json,
                             experiment_dir, read_state, run_label, update_state, write_exit_code)

RECORD_REFRESH_S = 120  # the record's execution section follows a long run (PRODUCT.md section 5)
POLL_S = 2.0


def say(message: str) -> None:
    print(f"[pipeline] {message}", flush=True)


def record_outcome(run_dir: Path, train_rc: int) -> str:
    """finished / stopped / guardrail_stopped / failed, recorded in state.json."""
    recorded = read_state(run_dir).state
    if recorded in FINAL_BY_TRAINER:
        result = recorded
    elif train_rc == 0:
        result = "finished"
    else:
        result = "failed"
    changes: dict[str, Any] = {"train_outcome": result,
                               "phase": "evaluate" if result in ("finished", "guardrail_stopped") else "done"}
    if result in ("stopped", "failed"):
        changes["ended_at"] = time.time()
    update_state(run_dir, **changes)
    return result


def mark_stopped(run_dir: Path, reason: str) -> None:
    """A stop that came after training ended: the checkpoint is complete, the run is stopped."""
    update_state(run_dir, state="stopped", stop_reason=reason, phase="stopped", ended_at=time.time())
    refresh_record(run_dir)


def refresh_record(run_dir: Path) -> None:
    """Re-render the record from the run's files; a failure here must not fail the run."""
    from lifecycle.document.record import write_record

    plan = read_json(Path(run_dir) / PLAN_FILE)
    if plan is None:
        return
    try:
        write_record(Lab.of_run(run_dir), load_config(Path(run_dir) / CONFIG_FILE).version, plan.get("lang", "en"))
    except (MinimindError, OSError) as exc:
        print(f"warning: record not refreshed: {exc}", file=sys.stderr, flush=True)


class StopRequest:
    """SIGTERM/SIGINT only note the request: the trainer, signalled with the group, checkpoints.

    SIGUSR1 (Slurm: the time limit is near) reaches only this process; it is passed to the
    trainer as SIGTERM, which every launcher (accelerate, srun) forwards to its workers.
    """

    def __init__(self) -> None:
        self.requested = False
        self.time_limit = False
        self.child: Optional[subprocess.Popen] = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        signal.signal(signal.SIGUSR1, self._time_limit)

    def _handle(self, _signum: int, _frame: Any) -> None:
        if not self.requested:
            say("stop requested: waiting for the current step to end")
        self.requested = True

    def _time_limit(self, _signum: int, _frame: Any) -> None:
        say("the job's time limit is near (SIGUSR1): checkpointing and stopping")
        self.time_limit = True
        self.requested = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)


def _train(run_dir: Path, resume: bool, stop: Optional[StopRequest] = None, keep_fds: tuple[int, ...] = ()) -> int:
    from lifecycle.running.launch import ensure_launch_files, train_command
    from lifecycle.running.slurm import train_argv

    lab = Lab.of_run(run_dir)
    cfg = load_config(run_dir / CONFIG_FILE)
    ensure_launch_files(lab, cfg, run_dir)
    argv = train_argv(cfg, train_command(lab, cfg, run_dir) + (["--resume"] if resume else []))
    # keep_fds: the slot locks, so they stay held while the trainer lives, even if this process dies.
    proc = subprocess.Popen(argv, cwd=lab.root, pass_fds=keep_fds)
    if stop is not None:
        stop.child = proc  # SIGUSR1 is passed on to it
    last_refresh = time.monotonic()
    while True:
        try:
            return proc.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() - last_refresh >= RECORD_REFRESH_S:
            last_refresh = time.monotonic()
            refresh_record(run_dir)


def _evaluate(run_dir: Path) -> int:
    return subprocess.call([sys.executable, "-m", "training.evaluate", "--run-dir", str(run_dir)],
                           cwd=Lab.of_run(run_dir).root)


def _analyse(run_dir: Path) -> int:
    """The agent's step never fails a trained run: a failure is recorded as analysis_failed."""
    from lifecycle.running.analyse import run_analysis
    from lifecycle.running.analyse import analyse_when_complete
    from lifecycle.knowledge.replicates import replicated

    if replicated(run_dir):  # one analysis per experiment: the last replicate to finish does it
        outcome, message = analyse_when_complete(run_dir)
        if outcome != "failed":
            say(f"analysed the experiment: record {message}" if outcome == "analysed" else message)
            return 0
        ok = False
    else:
        ok, message = run_analysis(run_dir)
    if ok:
        say(f"analysed: record {message}")
    else:
        say(f"analysis failed ({message}); the run keeps its training state. "
            f"Redo it with: minimind analyse {experiment_dir(Path(run_dir)).name}")
    return 0


STEPS_AFTER_TRAINING = (("evaluate", _evaluate), ("analyse", _analyse))


def _take_slots(run_dir: Path, stop: StopRequest):
    """The run's GPU slots, waiting `queued` for them; (None, False) when stopped while queued."""
    from lifecycle.running import slots

    cfg = load_config(run_dir / CONFIG_FILE)
    ids = slots.slot_ids(cfg)
    folder, need = (slots.slot_dir(Lab.of_run(run_dir), cfg), cfg.launch.num_processes) if ids is not None else (None, 0)
    if ids is None:
        # One device, several replicates: they take turns through the experiment's own one-slot queue.
        folder, ids, need = slots.private_queue(cfg, run_dir), [0], 1
        if folder is None:
            return None, True
    private = slots.slot_ids(cfg) is None

    def on_wait(position: int, what: str) -> None:
        if private:  # not a GPU slot: the experiment's own turn on this device
            what = "the replicate before it to end (one device: replicates train one at a time)"
        say(f"queued (position {position}): waiting for {what}")
        update_state(run_dir, state="queued", phase="queued", queue_position=position, waiting_for=what)

    held = slots.acquire(folder, ids, need, run_label(run_dir), lambda: stop.requested, on_wait)
    if held is None:
        update_state(run_dir, state="stopped", phase="stopped", stop_reason="stopped while queued; it never started",
                     queue_position=None, waiting_for=None, ended_at=time.time())
        refresh_record(run_dir)
        return None, False
    if private:  # the private queue: this replicate's turn on the one device
        update_state(run_dir, state="running", phase="setup", queue_position=None, waiting_for=None)
        say(f"replicate {run_label(run_dir)}: its turn on this device")
        return held, True
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, held.ids))
    update_state(run_dir, state="running", phase="setup", gpus=held.ids, queue_position=None, waiting_for=None)
    say(f"GPU slot(s) {', '.join(map(str, held.ids))}: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}")
    return held, True


def _after_time_limit(run_dir: Path) -> None:
    """A stop near the Slurm time limit: say so, and with slurm.requeue submit the continuation."""
    from lifecycle.running import slurm

    state = read_state(run_dir)
    update_state(run_dir, stop_reason=f"Slurm time limit near: stopped at its last checkpoint (step {state.step}); resumable")
    lab = Lab.of_run(run_dir)
    if slurm.in_job() and lab.settings().slurm.requeue:
        job = slurm.submit(lab, run_dir, resume=True, after=slurm.in_job()).slurm_job
        say(f"slurm.requeue: submitted job {job} to continue after this one")


def run(run_dir: Path, resume: bool, stop: StopRequest) -> int:
    """The whole pipeline; returns the run's exit status (0 done, 10 stopped, other: failed)."""
    run_dir = Path(run_dir).resolve()
    clear_exit_code(run_dir)  # a requeued job's pipeline starts over a finished job's exit code
    held, go = _take_slots(run_dir, stop)
    if not go:
        return EXIT_STOPPED
    say(f"experiment {run_label(run_dir)}: started {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
    train_rc = _train(run_dir, resume, stop, held.fds if held else ())
    outcome = record_outcome(run_dir, train_rc)
    refresh_record(run_dir)
    say(f"training ended: {outcome} (exit {train_rc})")
    if stop.requested and outcome != "stopped":
        mark_stopped(run_dir, "stopped as training ended")
        outcome = "stopped"
    if outcome == "stopped":
        if stop.time_limit:
            _after_time_limit(run_dir)
            refresh_record(run_dir)
        return EXIT_STOPPED
    if outcome not in ("finished", "guardrail_stopped"):
        return 1
    for name, step in STEPS_AFTER_TRAINING:
        if name == "analyse" and held is not None:
            held.release()  # the GPUs are done with; the next queued run may start
        rc = step(run_dir)
        if stop.requested:
            mark_stopped(run_dir, f"stopped during {name}")
            return EXIT_STOPPED
        if rc != 0:
            return rc
    say(f"experiment {run_label(run_dir)}: done {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lifecycle.running.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path, help="runs/V: holds config.yaml")
    parser.add_argument("--resume", action="store_true", help="continue training from checkpoints/last.pth")
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    stop = StopRequest()
    code = 1
    try:
        code = run(run_dir, args.resume, stop)
    except MinimindError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        code = exc.exit_code
    finally:
        write_exit_code(run_dir, code)  # the run's last word (see the module docstring)
    return code


if __name__ == "__main__":
    sys.exit(main())
