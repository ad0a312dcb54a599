"""The code gate: every change to `models/model.py` that minimind did not get from a human's
editor (the agent's edits, a human's `--patch`) passes it before anyone approves it.

Stages, cheapest first, stopping at the first failure:
  static (lifecycle/code/codestatic.py, in this process, reading text and AST only)
    scope      non-empty, at most MAX_CHANGED_LINES, every hunk with a reason, only models/model.py
    parse      parses and compiles (the error with its line)
    lint       pyflakes errors that are new against the base
    policy     imports from an allow-list; no eval/exec/open/__import__, dunder escapes, torch.save/load/hub
    interface  what the registry, the trainer, evaluation and the checks use is still there
    touched    the changed definitions are among the plan's `touches` (and ModelConfig)
    settings   the new ModelConfig fields are the plan's `new_settings`; none removed
  child (lifecycle/code/codegate_child.py, in a process of lifecycle/code/sandbox.py)
    load, checks, effect, smoke

No candidate code is imported in this process: the candidate's validated config comes back
from the child as data.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from agent.codeplan import CodeChange  # noqa: F401 - the plan's declaration, re-exported for the gate's callers
from lifecycle.code import codestatic
from lifecycle.code.sandbox import ChildRun, Limits, known_secrets, redact, run_child

TOOL_ROOT = Path(__file__).resolve().parents[2]  # the package whose checks the child runs
CHILD_STAGES = ("load", "checks", "effect", "smoke")


@dataclass
class GateReport:
    """Every stage that ran, the diff with each hunk's reasons, and what the child reported."""

    stages: list[dict[str, Any]]
    diff: str
    hunks: list[dict[str, Any]]
    sha256: str
    isolation: Optional[dict] = None
    plan_config: Optional[dict] = None      # the experiment's model config, validated by the candidate (child)
    schema: Optional[dict] = None           # the candidate's ModelConfig.fields_schema() (child)
    new_settings: list[str] = field(default_factory=list)
    touched: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(s["status"] != "failed" for s in self.stages) and bool(self.stages)

    @property
    def failure(self) -> Optional[dict[str, Any]]:
        return next((s for s in self.stages if s["status"] == "failed"), None)

    def refusal(self) -> str:
        """The first failure in one paragraph: for the model's tool result and the human's error."""
        bad = self.failure
        if bad is None:
            return ""
        text = f"stage {bad['stage']} failed: {bad['detail']}"
        if bad.get("lesson"):
            text += f" (lesson: {bad['lesson']})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"stages": self.stages, "sha256": self.sha256, "isolation": self.isolation, "plan_config": self.plan_config,
                "new_settings": self.new_settings, "touched": self.touched, "seconds": self.seconds,
                "hunks": self.hunks}


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def static_stages(base: str, candidate: str, change: Optional[CodeChange], reasons: list[tuple[int, int, str]],
                  files: tuple[str, ...] = (codestatic.MODEL_PATH,),
                  max_lines: int = codestatic.MAX_CHANGED_LINES) -> tuple[list[codestatic.Stage], dict[str, Any]]:
    """The static stages up to the first failure, and what they found (touched, new settings)."""
    import ast

    found: dict[str, Any] = {"touched": [], "new_settings": []}
    out = [codestatic.scope(base, candidate, reasons, files, max_lines)]
    if out[-1].failed:
        return out, found
    stage, tree = codestatic.parse(candidate)
    out.append(stage)
    if tree is None:
        return out, found
    base_tree = ast.parse(base)
    for run in (lambda: codestatic.lint(base, candidate),
                lambda: codestatic.policy(tree, base_tree),
                lambda: codestatic.interface(base_tree, tree),
                lambda: codestatic.touched(base_tree, tree, list(change.touches) if change else None),
                lambda: codestatic.settings(base_tree, tree, change.setting_names if change else None)):
        out.append(run())
        if out[-1].failed:
            return out, found
    found["touched"] = out[-2].items
    found["new_settings"] = out[-1].items
    return out, found


def validate(base: str, candidate: str, *, change: Optional[CodeChange], reasons: list[tuple[int, int, str]],
             base_model: dict[str, Any], model_sets: dict[str, Any], lab_checks: Optional[str] = None,
             files: tuple[str, ...] = (codestatic.MODEL_PATH,), limits: Limits = Limits(),
             smoke_steps: int = 20, max_lines: int = codestatic.MAX_CHANGED_LINES) -> GateReport:
    """Every stage on one candidate. `base_model` is the experiment's model config as the base
    file validates it; `model_sets` the model.* values the plan sets (new fields among them);
    `lab_checks` the text of the lab's committed checks.py (None: the lab has none)."""
    diff = codestatic.unified_diff(base, candidate)
    report = GateReport([], diff, codestatic.hunk_reasons(diff, reasons), sha256_text(candidate))
    start = time.monotonic()
    stages, found = static_stages(base, candidate, change, reasons, files, max_lines)
    report.seconds["static"] = round(time.monotonic() - start, 3)
    report.stages = [s.to_dict() for s in stages]
    report.touched, report.new_settings = found["touched"], found["new_settings"]
    if any(s.failed for s in stages):
        return report
    start = time.monotonic()
    child = run_checks_in_child(base, candidate, base_model, model_sets, lab_checks,
                                changes_default=bool(change and change.changes_default), limits=limits,
                                smoke_steps=smoke_steps)
    report.seconds["child"] = round(time.monotonic() - start, 3)
    report.stages += child["stages"]
    report.isolation, report.plan_config, report.schema = child["isolation"], child.get("plan_config"), child.get("schema")
    return report


def run_checks_in_child(base: str, candidate: str, base_model: dict[str, Any], model_sets: dict[str, Any],
                        lab_checks: Optional[str], *, changes_default: bool, limits: Limits = Limits(),
                        smoke_steps: int = 20) -> dict[str, Any]:
    """The child's stages on the candidate; {stages, isolation, plan_config, schema}."""
    secrets = known_secrets()
    work = Path(tempfile.mkdtemp(prefix="minimind-gate-"))
    try:
        (work / "candidate.py").write_text(candidate, encoding="utf-8")
        (work / "base.py").write_text(base, encoding="utf-8")
        if lab_checks is not None:
            (work / "checks.py").write_text(lab_checks, encoding="utf-8")
        request = {"candidate": "candidate.py", "base": "base.py", "lab_checks": lab_checks is not None,
                   "base_config": base_model, "model_sets": model_sets, "changes_default": changes_default,
                   "smoke_steps": smoke_steps, "result": "result.json"}
        (work / "request.json").write_text(json.dumps(request, default=str), encoding="utf-8")
        run = run_child(["-m", "lifecycle.code.codegate_child", str(work / "request.json")], work, limits,
                        pythonpath=str(TOOL_ROOT), secrets=secrets)
        try:
            result = json.loads((work / "result.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            result = {"stages": [], "running": "load"}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stages = [_clean(s, secrets) for s in result.get("stages", [])]
    if result.get("running") or run.returncode != 0 or run.timed_out:
        stages.append(_killed(run, result.get("running") or "load", limits, secrets))
    return {"stages": stages, "isolation": run.isolation, "plan_config": result.get("plan_config"),
            "schema": result.get("schema"), "seconds": round(run.seconds, 3)}


def _killed(run: ChildRun, stage: str, limits: Limits, secrets: tuple[str, ...]) -> dict[str, Any]:
    """The stage the child did not finish, and why (a limit, a signal, a crash)."""
    tail = redact(" ".join(run.stderr.strip().splitlines()[-3:])[-300:], secrets)
    if run.timed_out:
        why = f"did not finish within {limits.wall_s:g}s; its whole process group was killed"
    elif run.signal_name == "SIGXCPU":
        why = f"used more than {limits.cpu_s}s of CPU (RLIMIT_CPU) and was killed"
    elif run.signal_name == "SIGXFSZ":
        why = f"wrote a file larger than {limits.file_size >> 20} MiB (RLIMIT_FSIZE) and was killed"
    elif run.signal_name:
        why = f"was killed by {run.signal_name}" + (" (at the CPU or address-space limit)" if run.signal_name == "SIGKILL" else "")
    else:
        why = f"exited with status {run.returncode}" + (f": {tail}" if tail else "")
    if "MemoryError" in run.stderr or "Cannot allocate memory" in run.stderr:
        why += f" (address space limited to {limits.address_space >> 30} GiB)"
    return {"stage": stage, "status": "failed", "detail": f"the child process running the candidate {why}"}


def _clean(stage: dict[str, Any], secrets: tuple[str, ...]) -> dict[str, Any]:
    """A stage as the child reported it, with any secret removed from its text (it should hold none)."""
    return json.loads(redact(json.dumps(stage), secrets))
