"""All or nothing for the verbs that write several files: a failure puts every file back.

`all_or_nothing(paths)` keeps the bytes of each path (or that it did not exist) before the
block runs; when the block raises, whatever the cause, each path is restored and each
one that did not exist is removed. SIGTERM and SIGHUP raise `Terminated` inside the block,
so `kill` is undone as an exception is (SIGINT already raises KeyboardInterrupt). While the
files are put back, these signals are held, so a second `kill` cannot cut the undo short.
"""

from __future__ import annotations

import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional

from minimind.atomic import write_bytes

CAUGHT = (signal.SIGTERM, signal.SIGHUP)
HELD = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class Terminated(BaseException):
    """A signal ended the command (BaseException: no `except Exception` swallows it)."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise(signum, frame) -> None:
    raise Terminated(signum)


class _Handlers:
    """The handlers `raising_signals` replaced; `restore` puts them back (once)."""

    def __init__(self, previous: dict) -> None:
        self.previous = previous

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


def raising_signals() -> _Handlers:
    """From now on SIGTERM and SIGHUP raise `Terminated` (main thread only); `.restore()` undoes it."""
    if threading.current_thread() is not threading.main_thread():
        return _Handlers({})
    previous = {sig: signal.getsignal(sig) for sig in CAUGHT}
    for sig in CAUGHT:
        signal.signal(sig, _raise)
    return _Handlers(previous)


@contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `Terminated` while the block runs."""
    handlers = raising_signals()
    try:
        yield
    finally:
        handlers.restore()


@contextmanager
def signals_held() -> Iterator[None]:
    """Signals that arrive during the block wait until it ends (then act as they would have)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Undo:
    """What a block may write, as it was before: restored by `rollback`."""

    def __init__(self) -> None:
        self._before: dict[Path, Optional[bytes]] = {}

    def keep(self, *paths: Path) -> None:
        """Remember each file's bytes (None: absent, or a folder this block may create)."""
        for path in map(Path, paths):
            if path in self._before:
                continue
            if path.is_dir():
                raise ValueError(f"{path} is a folder that exists: only files and new folders can be undone")
            self._before[path] = path.read_bytes() if path.is_file() else None

    def rollback(self) -> None:
        for path, data in reversed(list(self._before.items())):
            try:
                if data is not None:
                    if not path.is_file() or path.read_bytes() != data:
                        write_bytes(path, data)
                elif path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            except OSError:
                continue  # put back what can be; the error that failed the verb is the one to report


@contextmanager
def all_or_nothing(paths: Iterable[Path] = ()) -> Iterator[Undo]:
    """Run the block; if it raises (a signal included), put `paths` and any kept later back."""
    undo = Undo()
    undo.keep(*paths)
    with signals_raise():
        try:
            yield undo
        except BaseException:
            with signals_held():
                undo.rollback()
            raise

