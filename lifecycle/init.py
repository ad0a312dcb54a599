"""`minimind init DIR`: a fresh lab with its own git repo, skeleton, settings, model and templates."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from lifecycle import gitops
from minimind.atomic import write_text
from minimind.errors import MinimindError
from minimind.lab import Lab
from minimind.settings import SETTINGS_FILE, LabSettings, dump_settings, load_settings

PACKAGE_ROOT = Path(__file__).resolve().parent.parent

GITIGNORE = """\
# minimind: data builds, checkpoints, logs and caches stay out of git
data/
runs/*/checkpoints/
runs/*/train.log
runs/*/swanlog/
runs/*/exit_code*
runs/*/seeds/*/checkpoints/
runs/*/seeds/*/train.log
runs/*/seeds/*/swanlog/
runs/*/seeds/*/exit_code*
runs/*/seeds/*/state.json
runs/*/seeds/*/.state.lock
runs/*/seeds/*/plots/
runs/*/seeds/.queue/
runs/*/.analyse.lock
runs/*/state.json
runs/*/.state.lock
runs/*/.record.sha256
runs/*/.record.last.md
runs/.failed/
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


def ensure_gitignore(lab: Lab) -> None:
    """Add to the lab's .gitignore every line of today's that it lacks, keeping its own: a lab
    made before replicates knew nothing of runs/V/seeds/S/ (their checkpoints, state)."""
    path = lab.root / ".gitignore"
    have = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    missing = [line for line in GITIGNORE.splitlines() if line and not line.startswith("#") and line not in have]
    if missing:
        write_text(path, "\n".join(have + ["# added by minimind for replicates and newer run files", *missing]) + "\n")


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
    from lifecycle import lessons

    lessons.ensure(Lab(target))  # committed with the skeleton: the lessons the first plan is told

    gitops.init_repo(target)
    return Lab(target)
