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
        from lifecycle.knowledge.replicates import target

        name = version
        version, runs, _ = target(lab, name)
        if len(runs) > 1 or name != version:
            return _evaluate_replicates(lab, name, version, runs, num_samples, use_moe, files, env)
        run_dir = runs[0]
        if current(run_dir)[0] == "running":
            raise MinimindError(f"experiment {version} is still running; it evaluates itself when training ends")
        argv = [sys.executable, "-m", "training.evaluate", "--run-dir", str(run_dir)]
    argv += _options(num_samples, use_moe, files)
    result = subprocess.run(argv, cwd=lab.root, env=env)
    if result.returncode != 0:
        raise MinimindError(f"evaluation failed (exit {result.returncode}); see the messages above")
    if version and model_path is None:
        from lifecycle.running.analyse import run_analysis

        # The same guard as the run's own pipeline: a failing analysis (any exception) is
        # recorded as analysis_failed beside the new eval.json, never a changed training state.
        ok, where = run_analysis(lab.run_dir(version))
        if not ok:
            raise MinimindError(f"evaluated {version} (runs/{version}/eval.json written), but the analysis failed: "
                                f"{where}; redo it with: minimind analyse {version}")
        return f"Evaluated and analysed {version}: runs/{version}/eval.json, {where}"
    return "Evaluation written."



def _options(num_samples: Optional[int], use_moe: bool, files: Optional[dict[str, Path]]) -> list[str]:
    """The evaluator's options that `eval` passes on, for one run or for each replicate."""
    argv = ["--num-samples", str(num_samples)] if num_samples is not None else []
    if use_moe:
        argv.append("--use-moe")
    for name, path in (files or {}).items():
        argv += [f"--{name}", str(Path(path).resolve())]
    return argv

def _evaluate_replicates(lab: Lab, name: str, version: str, runs: list[Path], num_samples: Optional[int],
                         use_moe: bool, files: Optional[dict[str, Path]], env: dict) -> str:
    """`eval V` of a replicated experiment evaluates every replicate, `eval V@SEED` one; then the
    experiment is analysed once, when every replicate has its eval.json."""
    from lifecycle.running.analyse import analyse_when_complete
    from minimind.rundir import run_label

    busy = [run_label(r) for r in runs if current(r)[0] in ("running", "queued")]
    if busy:
        raise MinimindError(f"{', '.join(busy)} still running or queued; a replicate evaluates itself when its "
                            "training ends")
    for run_dir in runs:
        argv = [sys.executable, "-m", "training.evaluate", "--run-dir", str(run_dir),
                *_options(num_samples, use_moe, files)]
        if subprocess.run(argv, cwd=lab.root, env=env).returncode != 0:
            raise MinimindError(f"evaluation of {run_label(run_dir)} failed; see the messages above")
    from minimind.rundir import update_state

    update_state(lab.run_dir(version), analysed=False)  # new numbers: the experiment's analysis is redone
    outcome, message = analyse_when_complete(runs[0])
    done = ", ".join(run_label(r) for r in runs)
    if outcome == "failed":
        raise MinimindError(f"evaluated {done}, but the analysis failed: {message}; redo it with: minimind analyse {version}")
    if outcome == "waiting":
        return f"Evaluated {done}; the experiment is analysed once every replicate is ({message})"
    return f"Evaluated {done} and analysed {version}: {message}"
