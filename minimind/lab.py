"""Where a lab is and what lives in it: discovery, paths, and `minimind init`.

A lab is a git repository with `minimind.yaml` at its root. `MINIMIND_LAB` wins;
otherwise the nearest parent of the working directory that has `minimind.yaml`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from minimind.errors import MinimindError
from minimind.settings import SETTINGS_FILE, LabSettings, load_settings

PACKAGE_ROOT = Path(__file__).resolve().parent.parent

GITIGNORE = """\
# minimind: data builds, checkpoints, logs and caches stay out of git
data/
runs/*/checkpoints/
runs/*/train.log
runs/*/swanlog/
runs/*/exit_code*
runs/*/state.json
runs/*/.state.lock
runs/*/.record.sha256
runs/*/record.rendered.md
runs/*/commit_message.md
runs/*/review.json
runs/*/agent/
runs/*/ds_config.json
runs/.*
!runs/.gitkeep
runs/compare_*.png
swanlog/
__pycache__/
*.pyc
*.pth
*.pt
.venv/
"""


@dataclass(frozen=True)
class Lab:
    root: Path

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
        return self.models_dir / ("model_" + version.replace(".", "_") + ".py")

    def resolve(self, relative: str) -> Path:
        """A lab-relative path from a config (absolute paths are kept as given)."""
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    def versions(self) -> list[str]:
        from minimind.versions import sorted_versions

        if not self.runs_dir.is_dir():
            return []
        return sorted_versions(p.name for p in self.runs_dir.iterdir() if (p / "state.json").exists())


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


def init_lab(target: Path, settings_text: Optional[str] = None) -> Lab:
    """Create a fresh lab: its own git repo on `main`, skeleton, settings, model, templates."""
    target = target.expanduser().resolve()
    if (target / SETTINGS_FILE).exists():
        raise MinimindError(f"{target} is already a lab ({SETTINGS_FILE} exists)")
    if target.exists() and any(p.name != ".git" for p in target.iterdir()):
        raise MinimindError(f"{target} exists and is not empty; choose a new or empty folder")
    from minimind.atomic import write_text
    from minimind.settings import dump_settings

    for sub in ("models", "experiment", "runs", "data", "templates"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PACKAGE_ROOT / "models" / "model.py", target / "models" / "model.py")
    for tpl in sorted((PACKAGE_ROOT / "templates").glob("*.j2")):
        shutil.copyfile(tpl, target / "templates" / tpl.name)
    (target / "runs" / ".gitkeep").write_text("")
    (target / "experiment" / ".gitkeep").write_text("")
    write_text(target / ".gitignore", GITIGNORE)
    header = ("# minimind lab settings. Unknown keys are errors; see docs/ARCHITECTURE.md of minimind.\n"
              "# model: fields of models/model.py ModelConfig for the first experiment.\n")
    write_text(target / SETTINGS_FILE, settings_text if settings_text is not None
               else header + dump_settings(LabSettings()))
    write_text(target / "README.md", f"# {target.name}\n\nA minimind lab. `minimind new X.Y.Z --goal ... --hypothesis ...` starts an experiment; `minimind status` shows them all.\n")
    load_settings(target / SETTINGS_FILE)  # a settings text we cannot read back is a bug, not a lab

    from agent import gitops

    gitops.init_repo(target)
    return Lab(target)
