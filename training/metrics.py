"""`runs/V/metrics.jsonl`: the source of truth for training curves.

One JSON object per line, appended and flushed per log step (and per periodic eval).
Only rank 0 writes; everyone reads it with `minimind.rundir.read_metrics`. On resume the
file is cut back, atomically, to the lines whose step the checkpoint has already covered,
so the finished file holds each step exactly once.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from minimind.atomic import write_text
from minimind.rundir import read_metrics


def clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None (a metrics line must always parse as strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def truncate_after(path: Path, step: int) -> int:
    """Keep only rows with `step <= step` (atomic rewrite); returns the rows kept."""
    path = Path(path)
    if not path.exists():
        return 0
    kept = [row for row in read_metrics(path) if isinstance(row.get("step"), int) and row["step"] <= step]
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
