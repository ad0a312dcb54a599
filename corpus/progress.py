"""A byte-based rich progress bar (with ETA) that disappears when progress is off.

Progress goes to stderr so that commands printing JSON on stdout stay parseable."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)


@contextmanager
def byte_progress(description: str, total_bytes: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n_bytes)`; draws a bar with speed and time remaining when enabled."""
    if not enabled:
        yield lambda n: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total_bytes)
        yield lambda n: progress.advance(task, n)
