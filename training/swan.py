"""SwanLab mirror of metrics.jsonl: optional, never fatal, never prompting.

metrics.jsonl is the source of truth; this only copies rows to SwanLab. The mode is
always passed explicitly (SwanLab's own default is online, which asks for a key and
fails under nohup). `cloud` without SWANLAB_API_KEY falls back to `offline` rather than
prompt. Any SwanLab failure becomes one warning line in train.log and switches the
mirror off; training goes on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

# Our setting names -> SwanLab's mode names.
MODES = {"local": "local", "offline": "offline", "cloud": "online", "disabled": "disabled"}


class SwanMirror:
    def __init__(self, mode: str, project: str, run_dir: Path, name: str, config: dict[str, Any],
                 warn: Callable[[str], None]):
        self.warn = warn
        self.run: Optional[Any] = None
        if mode == "disabled":
            return
        if mode == "cloud" and not os.environ.get("SWANLAB_API_KEY"):
            warn("swanlab: mode cloud but SWANLAB_API_KEY is not set; mirroring offline instead")
            mode = "offline"
        try:
            import swanlab

            self.run = swanlab.init(project=project, name=name, mode=MODES[mode], config=config,
                                    log_dir=str(Path(run_dir) / "swanlog"), reinit=True)
        # SwanLab is a third-party mirror with many failure modes (auth, network, disk);
        # none of them may stop training, so every exception is reported and contained.
        except Exception as exc:  # noqa: BLE001
            self._fail("init", exc)

    def _fail(self, what: str, exc: BaseException) -> None:
        self.warn(f"swanlab: {what} failed ({type(exc).__name__}: {str(exc)[:200]}); mirroring disabled")
        self.run = None

    def log(self, row: dict[str, Any], step: int) -> None:
        if self.run is None:
            return
        numbers = {k: float(v) for k, v in row.items()
                   if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)
                   and v == v}
        try:
            self.run.log(numbers, step=step)
        except Exception as exc:  # noqa: BLE001 -- see __init__
            self._fail("log", exc)

    def finish(self, ok: bool = True) -> None:
        if self.run is None:
            return
        try:
            self.run.finish(state="success" if ok else "aborted")
        except Exception as exc:  # noqa: BLE001 -- see __init__
            self._fail("finish", exc)
        self.run = None
