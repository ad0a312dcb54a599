"""`minimind init DIR`: a fresh lab with its own git repo, skeleton, settings, model and templates."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from lifecycle.document import gitops
from lifecycle.document.gitops import GITIGNORE
from minimind.atomic import write_text
from minimind.errors import MinimindError
from minimind.lab import Lab
from minimind.settings import SETTINGS_FILE, LabSettings, dump_settings, load_settings

PACKAGE_ROOT = Path(__file__).resolve().parent.parent

def init_lab(target: Path, settings_text: Optional[str] = None) -> Lab:
    """Create a fresh lab: its own git repo on `main`, skeleton, settings, model, templates."""
    target = target.expanduser().resolve()
    if (target / SETTINGS_FILE).exists():
        raise MinimindError(f"{target} is already a lab ({SETTINGS_FILE} exists)")
    if target.exists() and any(p.name != ".git" for p in target.iterdir()):
        raise MinimindError(f"{target} exists and is not empty; choose a new or empty folder")
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
    from lifecycle.knowledge import lessons

    lessons.ensure(Lab(target))  # committed with the skeleton: the lessons the first plan is told

    gitops.init_repo(target)
    return Lab(target)
