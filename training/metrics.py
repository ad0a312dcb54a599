"""`runs/V/metrics.jsonl`: the source of truth for training curves.

One JSON object per line, appended and flushed per log step (and per periodic eval).
Only rank 0 writes. On resume the file is cut back, atomically, to the lines whose step
the checkpoint has already covered, so the finished file holds each step exactly once.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

from minimind.atomic import write_text


def clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None (a metrics line must always parse as strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def iter_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Parsed rows; a torn last line (a crash mid-write) is skipped, not fatal."""
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                yield row


def read_rows(path: Path) -> list[dict[str, Any]]:
    return list(iter_rows(path))


def truncate_after(path: Path, step: int) -> int:
    """Keep only rows with `step <= step` (atomic rewrite); returns the rows kept."""
    path = Path(path)
    if not path.exists():
        return 0
    kept = [row for row in iter_rows(path) if isinstance(row.get("step"), int) and row["step"] <= step]
    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept))
    return len(kept)


class MetricsWriter:
    """Append-only writer; each line is flushed and fsynced so a kill loses at most one."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        self._handle.write(json.dumps(clean(row), ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()
