"""The wheel: a free distribution name, the `minimind` command, every package and template.

Built from a copy of the sources in a temporary folder (no build/ or egg-info in the
repository), without build isolation and without the network.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOT_SHIPPED = {"tests", "bench", "docs", "runs", "experiment", "build", "dist"}


def test_wheel_holds_every_package_template_and_the_command(tmp_path):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] != "minimind"  # taken on the public index by an unrelated project
    assert project["scripts"] == {"minimind": "cli:main"}
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "cli.py"):
        shutil.copy(ROOT / name, src / name)
    packages = sorted(p.name for p in ROOT.iterdir()
                      if p.is_dir() and (p / "__init__.py").is_file() and p.name not in NOT_SHIPPED)
    for name in packages:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    wheel, = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "cli.py" in names and "models/model.py" in names
    for package in packages:  # a package added to the repo but not to pyproject.toml fails here
        expected = {f"{package}/{p.relative_to(ROOT / package)}" for p in (ROOT / package).rglob("*.py")
                    if "__pycache__" not in p.parts}
        assert expected <= names, sorted(expected - names)
    templates = {f"templates/{p.name}" for p in (ROOT / "templates").glob("*.j2")}
    assert templates and templates <= names
    assert "minimind/phrases.yaml" in names  # the phrasebook every record and message is written from
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "minimind = cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
