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
             model_type: Optional[str], sizes: Optional[dict[str, int]] = None, use_moe: bool = False,
             files: Optional[dict[str, Path]] = None) -> str:
    """Run the evaluator; `files` may name another tokenizer, pretrain JSONL or probes file."""
    env = dict(os.environ, PYTHONSAFEPATH="1", MINIMIND_LAB=str(lab.root))
    for name, path in (files or {}).items():
        if not Path(path).is_file():
            raise UsageError(f"--{name} {path}: no such file")
    if model_path is not None:
        # A minimind checkpoint records its module; for a raw state dict the evaluator asks for --model-type.
        argv = [sys.executable, "-m", "training.evaluate", "--model-path", str(model_path), "--lab", str(lab.root)]
        if model_type:
            argv += ["--model-type", model_type]
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
    if use_moe:
        argv.append("--use-moe")
    for name, path in (files or {}).items():
        argv += [f"--{name}", str(Path(path).resolve())]
    result = subprocess.run(argv, cwd=lab.root, env=env)
    if result.returncode != 0:
        raise MinimindError(f"evaluation failed (exit {result.returncode}); see the messages above")
    if version and model_path is None:
        from lifecycle.analyse import run_analysis

        # The same guard as the run's own pipeline: a failing analysis (any exception) is
        # recorded as analysis_failed beside the new eval.json, never a changed training state.
        ok, where = run_analysis(lab.run_dir(version))
        if not ok:
            raise MinimindError(f"evaluated {version} (runs/{version}/eval.json written), but the analysis failed: "
                                f"{where}; redo it with: minimind analyse {version}")
        return f"Evaluated and analysed {version}: runs/{version}/eval.json, {where}"
    return "Evaluation written."
