"""Where a lab is and what lives in it: discovery, paths, and `minimind init`.

A lab is a git repository with `minimind.yaml` at its root. `MINIMIND_LAB` wins;
otherwise the nearest parent of the working directory that has `minimind.yaml`.
Creating one (`minimind init`) is the lifecycle's job: `lifecycle/init.py`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from minimind.errors import MinimindError
from minimind.rundir import is_experiment, lab_root
from minimind.settings import SETTINGS_FILE, LabSettings, load_settings
from minimind.versions import module_name, parse, sorted_versions

@dataclass(frozen=True)
class Lab:
    root: Path

    @classmethod
    def of_run(cls, run_dir) -> "Lab":
        """The lab a run directory belongs to, an experiment's runs/V or a replicate's
        runs/V/seeds/S (absolute, so a later change of the working directory cannot move it)."""
        return cls(lab_root(run_dir))

    @property
    def settings_path(self) -> Path:
        return self.root / SETTINGS_FILE

    def settings(self) -> LabSettings:
        return load_settings(self.settings_path)

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def experiment_dir(self) -> Path:
        return self.root / "experiment"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def cache_dir(self) -> Path:
        return self.root / "data" / "cache"

    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    def run_dir(self, version: str) -> Path:
        return self.runs_dir / version

    def record_path(self, version: str) -> Path:
        return self.experiment_dir / f"experiment_{version}.md"

    def snapshot_path(self, version: str) -> Path:
        return self.models_dir / (module_name(version) + ".py")

    def resolve(self, relative: str) -> Path:
        """A lab-relative path from a config (absolute paths are kept as given)."""
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    def versions(self) -> list[str]:
        """Every experiment of the lab, in version order."""
        if not self.runs_dir.is_dir():
            return []
        return sorted_versions(p.name for p in self.runs_dir.iterdir() if is_experiment(p))

    def require_run(self, version: str) -> Path:
        """runs/V of an existing experiment; the one place that says "no experiment V"."""
        parse(version)
        run_dir = self.run_dir(version)
        if not is_experiment(run_dir):
            raise MinimindError(f"no experiment {version} in {self.root}")
        return run_dir


def find_lab(start: Optional[Path] = None) -> Lab:
    """The lab named by MINIMIND_LAB, else the nearest parent with minimind.yaml."""
    env = os.environ.get("MINIMIND_LAB")
    if env:
        root = Path(env).expanduser().resolve()
        if not (root / SETTINGS_FILE).is_file():
            raise MinimindError(f"MINIMIND_LAB={env} is not a lab (no {SETTINGS_FILE}); run 'minimind init {env}'")
        return Lab(root)
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / SETTINGS_FILE).is_file():
            return Lab(candidate)
    raise MinimindError(f"not inside a lab (no {SETTINGS_FILE} here or above); run 'minimind init DIR' or set MINIMIND_LAB")
