"""`minimind check [VERSION]`, and the preflight step of `new`: run the lab's lessons as checks.

The model is the living `models/model.py` with the lab's default model settings, or, for
VERSION, that experiment's snapshot and config. It is built at a tiny size on the CPU
(lifecycle/knowledge/checks.py says how) so the whole set takes seconds. A failed check refuses a
launch with exit 3 and the lesson's text; `--force` goes ahead and the record keeps the
failed check and the reason given.
"""

from __future__ import annotations

from typing import Any, Optional

from minimind.errors import GateRefused, MinimindError
from minimind.lab import Lab

MARK = {"passed": "✓", "failed": "✗", "could_not_check": "?", "not_applicable": "–"}


def run_preflight(lab: Lab, module_name: str, model_config: dict[str, Any]) -> list[dict[str, Any]]:
    from lifecycle.knowledge.checks import run_all
    from models.registry import load_module

    module = load_module(lab.models_dir, module_name)
    return run_all(module, model_config, lab.root)


def lines(results: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in results:
        loud = "COULD NOT CHECK: " if r["status"] == "could_not_check" else ""
        out.append(f"  {MARK.get(r['status'], '?')} {r['id']}: {loud}{r['detail']}")
    return out


def refusal(results: list[dict[str, Any]]) -> Optional[str]:
    """The one-line refusal for failed checks, naming each lesson; None when none failed."""
    bad = [r for r in results if r["status"] == "failed"]
    if not bad:
        return None
    return ("preflight check(s) failed: " + "; ".join(f"{r['id']}: {r['detail']} — lesson: {r['lesson']} ({r['source']})"
                                                       for r in bad)
            + ". Fix models/model.py, or launch anyway with --force --reason '...'")


def check_command(lab: Lab, version: Optional[str], force: bool) -> list[str]:
    """The output of `minimind check`; raises GateRefused (exit 3) on a failed check unless --force."""
    from minimind.config import load_config
    from minimind.rundir import CONFIG_FILE

    if version is None:
        from models.registry import model_schema, validate_model

        model_cls, _ = model_schema(lab)
        config = validate_model(model_cls, dict(lab.settings().model))
        module, what = "model", "models/model.py with the lab's model settings"
    else:
        cfg = load_config(lab.require_run(version) / CONFIG_FILE)
        if not lab.snapshot_path(version).exists():
            raise MinimindError(f"experiment {version} has no snapshot models/{cfg.model_module}.py")
        module, config, what = cfg.model_module, cfg.model, f"models/{cfg.model_module}.py with runs/{version}/config.yaml"
    results = run_preflight(lab, module, config)
    out = [f"Preflight checks of {what} (tiny size, CPU):", *lines(results)]
    message = refusal(results)
    if message and not force:
        raise GateRefused(message + "\n" + "\n".join(out))
    if message:
        out.append("Failed check(s) reported; --force given, exit status 0.")
    return out
