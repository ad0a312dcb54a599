"""`minimind eval`: evaluate an experiment's kept checkpoint (then re-analyse it), or any checkpoint.

The evaluator runs as a subprocess: it imports torch, and the CLI does not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from minimind.errors import MinimindError, UsageError
from minimind.lab import Lab
from minimind.rundir import current


def evaluate(lab: Lab, version: Optional[str], num_samples: Optional[int], model_path: Optional[Path],
             model_type: Optional[str], sizes: Optional[dict[str, int]] = None) -> str:
    env = dict(os.environ, PYTHONSAFEPATH="1", MINIMIND_LAB=str(lab.root))
    if model_path is not None:
        if not model_type:
            raise UsageError("--model-path needs --model-type (e.g. model, model_original, model_1_4_8)")
        argv = [sys.executable, "-m", "training.evaluate", "--model-path", str(model_path), "--model-type", model_type,
                "--lab", str(lab.root)]
        for name, value in (sizes or {}).items():
            argv += [f"--{name}", str(value)]
        if version:
            argv += ["--run-dir", str(lab.require_run(version))]
    else:
        if not version:
            raise UsageError("give a VERSION, or --model-path with --model-type")
        run_dir = lab.require_run(version)
        if current(run_dir)[0] == "running":
            raise MinimindError(f"experiment {version} is still running; it evaluates itself when training ends")
        argv = [sys.executable, "-m", "training.evaluate", "--run-dir", str(run_dir)]
    if num_samples is not None:
        argv += ["--num-samples", str(num_samples)]
    result = subprocess.run(argv, cwd=lab.root, env=env)
    if result.returncode != 0:
        raise MinimindError(f"evaluation failed (exit {result.returncode}); see the messages above")
    if version and model_path is None:
        from lifecycle.analyse import analyse

        analyse(lab.run_dir(version))
        return f"Evaluated and analysed {version}: runs/{version}/eval.json, experiment/experiment_{version}.md"
    return "Evaluation written."
