"""Next-experiment proposals: the analysis's structured next step, `runs/V/next.json`.

A proposal is {base, goal, hypothesis, sets: ["key=value", ...], expect, why, estimate}.
It is derived from the numbers by rule (a refuted change is tried at half the step; a
guardrail in danger gets its remedy; a supported one is trained longer; an inconclusive
one gets more steps), its `--set` values are validated against the experiment's config
schema before it is stored, and its estimated cost is the compute estimate of the
config it would produce. `minimind new V2 --from-proposal V` starts from it; the human's
flags win.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from minimind.atomic import write_json
from minimind.errors import MinimindError, UsageError
from minimind.rundir import NEXT_FILE, read_json


def _midpoint(a: Any, b: Any) -> Any:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return None
    mid = (a + b) / 2
    return int(round(mid)) if isinstance(a, int) and isinstance(b, int) else mid


def _rules(cfg: dict, verdict: str, dangers: list[str], changes: list) -> tuple[list[tuple[str, Any]], str, str, str]:
    """(sets, goal, hypothesis, why) for the next experiment."""
    m, t = cfg["model"], cfg["train"]
    if "memory_entropy" in dangers and m.get("preset") in ("memory", "hybrid"):
        side = math.isqrt(m["knowledge_num"])
        more = min(side, m["num_candidates"] * 2)
        sets = [("model.num_candidates", more)] if more > m["num_candidates"] else [("model.diversity_loss_weight", 0.1)]
        return (sets, "Raise memory selection entropy", "More query diversity lifts memory selection entropy out of "
                "danger and lowers inference loss", "memory_entropy was in danger: the queries select too few entries")
    if "train_loss" in dangers:
        return ([("train.learning_rate", t["learning_rate"] / 2)], "Slow the collapse of the train loss",
                "A halved learning rate keeps the train loss out of danger and lowers inference loss",
                "train_loss was in danger: the model memorises faster than it generalises")
    numeric = [(k, _midpoint(a, b)) for k, a, b in changes if k.split(".")[0] in ("model", "train")]
    numeric = [(k, v) for k, v in numeric if v is not None]
    if verdict == "refuted" or any(d in dangers for d in ("train_inference_ratio", "repetition_rate")):
        if numeric:
            keys = ", ".join(k for k, _ in numeric)
            return (numeric, f"Half the step of {keys}", f"Half the change of {keys} keeps part of the intended effect "
                    "and lowers inference loss", "the full change was refuted or drove a guardrail into danger")
        return ([("train.seed", t["seed"] + 1)], "Repeat with another seed",
                "The refuted result repeats with another seed (inference loss does not improve)",
                "no config change to step back from: a second seed tells noise from effect")
    steps = t["max_steps"] * 2 if t["max_steps"] else None
    longer = [("train.max_steps", steps)] if steps else [("train.epochs", min(1000, t["epochs"] + 1))]
    if verdict == "supported":
        return (longer, "Train the supported configuration longer",
                "Longer training of the supported configuration lowers inference loss further",
                "the hypothesis was supported; more training tells whether the gain grows or was early noise")
    return (longer, "Train longer so the difference exceeds noise",
            "More training separates the change's effect from noise and lowers inference loss",
            "the result was inconclusive")


def build(lab, version: str, cfg: dict, verdict: str, dangers: list[str], changes: list) -> dict[str, Any]:
    """The validated proposal for the experiment after `version`."""
    from lifecycle import estimate
    from lifecycle.new import model_schema, validate_model
    from minimind.config import apply_sets

    sets, goal, hypothesis, why = _rules(cfg, verdict, dangers, changes)
    model_cls, fields = model_schema(lab)
    try:
        proposed = apply_sets(cfg, sets, fields)  # types and ranges against the schema
        proposed["model"] = validate_model(model_cls, proposed["model"])
    except UsageError as exc:
        raise MinimindError(f"the next-experiment proposal does not validate: {exc}") from None
    est = estimate.estimate(lab, proposed)
    base_est = estimate.estimate(lab, cfg)
    ratio = est["train_flops"] / base_est["train_flops"] if est["train_flops"] and base_est["train_flops"] else None
    return {"base": version, "goal": goal, "hypothesis": hypothesis, "expect": "inference_loss < base",
            "sets": [f"{k}={_yaml(v)}" for k, v in sets], "why": why,
            "estimate": {"train_flops": est["train_flops"], "ratio_to_base": ratio, "lines": estimate.summary_lines(est)}}


def _yaml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write(run_dir, proposal: dict[str, Any]) -> None:
    write_json(run_dir / NEXT_FILE, proposal)


def load(lab, version: str) -> dict[str, Any]:
    run_dir = lab.require_run(version)
    proposal = read_json(run_dir / NEXT_FILE)
    if proposal is None:
        raise UsageError(f"experiment {version} has no proposal (runs/{version}/{NEXT_FILE}): it is proposed after the analysis")
    return proposal


def summary(proposal: Optional[dict[str, Any]]) -> Optional[str]:
    if not proposal:
        return None
    return f"{proposal['goal']}: " + (" ".join(f"--set {s}" for s in proposal["sets"]) or "no --set")
