"""Graceful stop and the heartbeat thread.

SIGTERM/SIGINT (and SIGUSR1, which Slurm sends before a job's time limit when asked to
signal the job steps) only set a flag; the loop finishes the optimizer step in progress, saves
a checkpoint and exits with EXIT_STOPPED. The heartbeat thread rewrites state.json at
least every HEARTBEAT_S / 3 seconds, so `status` sees a live run even while one long
step or an evaluation is in progress. It writes state.json and nothing else: the record
(experiment/experiment_V.md) is rendered by the run pipeline's process, not the trainer.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from minimind.rundir import HEARTBEAT_S, update_state


class StopFlag:
    def __init__(self) -> None:
        self.signal_name: Optional[str] = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


class Heartbeat:
    """Daemon thread: update_state(heartbeat=now, **progress()) every `interval` seconds."""

    def __init__(self, run_dir: Path, progress: Callable[[], dict[str, Any]], interval: float = HEARTBEAT_S / 3):
        self.run_dir, self.progress, self.interval = Path(run_dir), progress, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def beat(self) -> None:
        update_state(self.run_dir, heartbeat=time.time(), **self.progress())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except OSError as exc:  # a full disk must not kill training; the next beat retries
                print(f"WARNING heartbeat failed: {exc}", flush=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
