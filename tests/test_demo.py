"""`minimind demo` (the README's main command) runs the whole loop and commits both experiments."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_the_whole_loop(tmp_path):
    target = tmp_path / "demo"
    out = subprocess.run([sys.executable, "-c", "import cli, sys; sys.exit(cli.main())", "demo", str(target), "--steps", "20"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for text in ("0.1.0: finished", "0.1.1: finished", "Committed experiment 0.1.0", "Committed experiment 0.1.1",
                 "Config differences", "model.preset", "hypothesis"):
        assert text in out.stdout, text
    log = subprocess.run(["git", "log", "--format=%s"], cwd=target, capture_output=True, text=True).stdout
    assert log.splitlines()[0].startswith("Experiment 0.1.1") and log.splitlines()[1].startswith("Experiment 0.1.0")
    assert (target / "runs" / "0.1.1" / "plots" / "loss.png").exists()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=target, capture_output=True, text=True).stdout
    assert status == "", status  # everything the demo produced is committed or ignored
