"""GPU slots on one machine: per-GPU lock files, and a first-come queue for runs that wait.

A slot is a lock file `gpu<N>.lock` in the slot folder (`launch.slot_dir`, default
`runs/.slots`), held with `flock` by the run's pipeline process (and inherited by its
trainer) for the life of the run. The kernel drops a flock when the last process holding
it ends, so a crash or `kill -9` frees the slot at once; nothing has to clean up.

A run that cannot get `launch.num_processes` slots waits in its own detached process
(no daemon): it puts a ticket in `queue/`, named by the time `new` or `resume` launched
it and flocked like a slot, so a ticket whose owner died is recognised and removed.
Only the oldest live ticket may take slots, so queued runs start in creation order.
`minimind stop` on a queued run signals that process, which leaves the queue and ends
the run `stopped` without ever starting it.

On a machine without GPUs `launch.gpus: all` means no slots (every run starts at once);
a list such as [0, 1] gives that many plain numbered slots, GPU or not.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from lifecycle.knowledge.replicates import one_device_queue, replicated
from minimind.config import ExperimentConfig
from minimind.errors import UsageError
from minimind.lab import Lab
from minimind.rundir import experiment_dir

SLOTS_DIR = ".slots"     # under runs/ unless launch.slot_dir says otherwise
QUEUE_DIR = "queue"
POLL_S = 0.5
QUEUED_AT_ENV = "MINIMIND_QUEUED_AT"  # set by the launch: the run's place in the queue


def detect_gpus() -> list[int]:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else the NVIDIA device nodes."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [int(x) for x in visible.split(",") if x.strip().isdigit()]
    found = [int(m.group(1)) for p in Path("/dev").glob("nvidia*") if (m := re.fullmatch(r"nvidia(\d+)", p.name))]
    if found:
        return sorted(found)
    try:  # some containers expose the driver without per-device nodes
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [int(x) for x in out.split() if x.strip().isdigit()]


def slot_ids(cfg: ExperimentConfig) -> Optional[list[int]]:
    """The slots this run draws from, or None when the lab runs without slots."""
    if cfg.launch.backend != "local":
        return None  # a Slurm job's GPUs are Slurm's to give
    if cfg.launch.gpus == "all":
        return detect_gpus() or None
    return list(cfg.launch.gpus)


def slot_dir(lab: Lab, cfg: ExperimentConfig) -> Path:
    return lab.resolve(cfg.launch.slot_dir) if cfg.launch.slot_dir else lab.runs_dir / SLOTS_DIR


def check_devices(cfg: ExperimentConfig) -> None:
    """Refuse GPU indices this machine does not have (the run would train on no device it named).
    A machine with no GPU at all keeps the list as plain numbered slots (see the module's docstring)."""
    if cfg.launch.backend != "local" or cfg.launch.gpus == "all":
        return
    found = detect_gpus()
    missing = [g for g in cfg.launch.gpus if g not in found]
    if found and missing:
        raise UsageError(f"launch.gpus names GPU {', '.join(map(str, missing))}, which this machine does not have "
                         f"(this machine has GPU {', '.join(map(str, found))})")


def check_request(cfg: ExperimentConfig) -> None:
    """Refuse at `new` a run that could never get its slots (it would wait forever)."""
    check_devices(cfg)
    ids = slot_ids(cfg)
    if ids is not None and cfg.launch.num_processes > len(ids):
        raise UsageError(f"launch.num_processes is {cfg.launch.num_processes} but launch.gpus gives "
                         f"{len(ids)} slot(s) ({', '.join(map(str, ids))})")


def _try_lock(path: Path):
    """An open file holding an exclusive flock on `path`, or None if another process holds it."""
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "?"
    except OSError:
        return "?"


@dataclass
class Held:
    """Slots held by this process; the files stay open (and flocked) until `release`."""

    ids: list[int]
    handles: list

    @property
    def fds(self) -> tuple[int, ...]:
        return tuple(h.fileno() for h in self.handles)

    def release(self) -> None:
        for handle in self.handles:
            handle.close()
        self.handles = []


def _take(folder: Path, ids: list[int], n: int, version: str) -> tuple[Optional[Held], list[int]]:
    """(the slots, []) or (None, the slots other runs hold)."""
    got, handles, busy = [], [], []
    for gpu in ids:
        handle = _try_lock(folder / f"gpu{gpu}.lock")
        if handle is None:
            busy.append(gpu)
            continue
        got.append(gpu)
        handles.append(handle)
        if len(got) == n:
            for h in handles:  # who holds it, for the queued runs' "waits for" line
                h.seek(0), h.truncate(), h.write(version), h.flush()
            return Held(got, handles), []
    for handle in handles:
        handle.close()
    return None, busy


def _live_tickets(queue: Path, mine: str) -> list[str]:
    """Tickets older than `mine` whose owner still lives; dead owners' tickets are removed."""
    alive = []
    for path in sorted(queue.iterdir()):
        if path.name >= mine or path.name.startswith("."):
            continue
        handle = _try_lock(path)
        if handle is None:
            alive.append(path.name)
            continue
        path.unlink(missing_ok=True)  # its owner is gone (we could lock it)
        handle.close()
    return alive


def _ticket_version(name: str) -> str:
    return name.split("-", 1)[1] if "-" in name else name


def acquire(folder: Path, ids: list[int], n: int, version: str, stopped: Callable[[], bool],
            on_wait: Callable[[int, str], None]) -> Optional[Held]:
    """Take `n` of the slots `ids`, waiting in creation order; None if `stopped()` turns true first.

    `on_wait(position, what)` is called whenever the queue position or what the run waits
    for changes (1 = next in line).
    """
    queue = folder / QUEUE_DIR
    queue.mkdir(parents=True, exist_ok=True)
    queued_at = int(os.environ.get(QUEUED_AT_ENV) or time.time_ns())
    mine = f"{queued_at:020d}-{version}"
    # Lock the ticket before it becomes visible, so a listed ticket is always held by a live owner.
    temp = queue / f".{mine}.{os.getpid()}"
    ticket = _try_lock(temp)
    os.replace(temp, queue / mine)
    last = None
    try:
        while True:
            if stopped():
                return None
            ahead = _live_tickets(queue, mine)
            if not ahead:
                held, busy = _take(folder, ids, n, version)
                if held is not None:
                    return held
                holders = ", ".join(f"{gpu} by {_holder(folder / f'gpu{gpu}.lock')}" for gpu in busy)
                what = f"{n} free GPU slot(s) of {len(ids)} (held: {holders})"
            else:
                what = f"{len(ahead)} earlier run(s) in the queue ({', '.join(_ticket_version(t) for t in ahead)})"
            if (len(ahead) + 1, what) != last:
                last = (len(ahead) + 1, what)
                on_wait(*last)
            time.sleep(POLL_S)
    finally:
        (queue / mine).unlink(missing_ok=True)
        ticket.close()


def private_queue(cfg: ExperimentConfig, run_dir: Path) -> Optional[Path]:
    """The one-slot queue that makes an experiment's replicates train one after another on a
    machine without GPU slots; None where slots (or Slurm) already decide, or for a lone run."""
    if cfg.launch.backend != "local" or not replicated(run_dir):
        return None
    if slot_ids(cfg) is not None:
        return None
    return one_device_queue(experiment_dir(Path(run_dir)))
