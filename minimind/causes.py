"""The causes of a run's result that its data supports: what a lesson may name (pure rules).

A lesson, a next step and the next-experiment rules blame only what one of these finds,
in this order:

1. `forced_check`: the run was launched with `--force` over a failed preflight check (the
   code the lab's lessons forbid); named first, whatever else happened.
2. `guardrail_moved`: a guardrail is in danger while the base's level of it was safe or
   watch, and the run changed something (config or model code) against that base. A
   danger the base already had is not this run's doing; without a base nothing moved.
3. `under_trained`: the train loss is still high (at least `UNDERTRAINED_SHARE` of the
   uniform loss ln(vocab_size)) with no overfitting sign (train loss and train/inference
   ratio both safe). Repetitive greedy text from such a model is under-training, not
   memorisation.

Nothing else is a cause: a refuted verdict alone names none, and then no lesson is proposed.
"""

from __future__ import annotations

import math
from typing import Any, Optional

FORCED_CHECK, GUARDRAIL_MOVED, UNDER_TRAINED = "forced_check", "guardrail_moved", "under_trained"
KINDS = (FORCED_CHECK, GUARDRAIL_MOVED, UNDER_TRAINED)
# A train loss at or above this share of ln(vocab_size) (the loss of a uniform guess) is
# "still high": at the lab's default vocabulary (6400) that is 6.57 against 8.76.
UNDERTRAINED_SHARE = 0.75
# The guardrails whose watch or danger level is a sign of overfitting (memorisation).
OVERFITTING_SIGNS = ("train_loss", "train_inference_ratio")
_MOVABLE_FROM = ("safe", "watch")


def _level(levels: Optional[dict], name: str) -> Optional[str]:
    entry = (levels or {}).get(name)
    return entry.get("level") if isinstance(entry, dict) else None


def _value(levels: Optional[dict], name: str) -> Optional[float]:
    entry = (levels or {}).get(name)
    value = entry.get("value") if isinstance(entry, dict) else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def forced_checks(preflight: Optional[dict]) -> list[dict[str, Any]]:
    """The failed preflight checks a run was launched over with --force (plan.json `preflight`)."""
    if not isinstance(preflight, dict) or not preflight.get("forced"):
        return []
    return [c for c in preflight.get("checks") or [] if isinstance(c, dict) and c.get("status") == "failed"]


def moved_to_danger(levels: Optional[dict], base_levels: Optional[dict], changed: bool) -> list[dict[str, Any]]:
    """[{name, from, base_value, value}] for guardrails this run's change moved into danger."""
    if not changed or base_levels is None:
        return []
    out = []
    for name in sorted(levels or {}):
        before = _level(base_levels, name)
        if _level(levels, name) == "danger" and before in _MOVABLE_FROM:
            out.append({"name": name, "from": before, "base_value": _value(base_levels, name),
                        "value": _value(levels, name)})
    return out


def uniform_loss(vocab_size: Any) -> Optional[float]:
    return math.log(vocab_size) if isinstance(vocab_size, int) and vocab_size > 1 else None


def under_trained(train_loss: Optional[float], levels: Optional[dict], vocab_size: Any) -> Optional[dict[str, Any]]:
    """{train_loss, uniform_loss} when the loss is still high and nothing shows overfitting; else None."""
    uniform = uniform_loss(vocab_size)
    if uniform is None or not isinstance(train_loss, (int, float)) or train_loss < UNDERTRAINED_SHARE * uniform:
        return None
    if any(_level(levels, name) in ("watch", "danger") for name in OVERFITTING_SIGNS):
        return None
    return {"train_loss": float(train_loss), "uniform_loss": uniform}


def find(*, preflight: Optional[dict], levels: Optional[dict], base_levels: Optional[dict], changed: bool,
         train_loss: Optional[float], vocab_size: Any) -> list[dict[str, Any]]:
    """Every supported cause, most direct first: [{kind, names, ...numbers}] (empty: none fits)."""
    causes: list[dict[str, Any]] = []
    checks = forced_checks(preflight)
    if checks:
        causes.append({"kind": FORCED_CHECK, "names": [c.get("id") for c in checks],
                       "details": [str(c.get("detail") or "") for c in checks],
                       "lessons": [str(c.get("lesson") or "") for c in checks]})
    moved = moved_to_danger(levels, base_levels, changed)
    if moved:
        causes.append({"kind": GUARDRAIL_MOVED, "names": [m["name"] for m in moved], "moves": moved})
    under = under_trained(train_loss, levels, vocab_size)
    if under:
        causes.append({"kind": UNDER_TRAINED, "names": ["under-trained"], **under})
    return causes


def first(causes: list[dict[str, Any]], kind: str) -> Optional[dict[str, Any]]:
    return next((c for c in causes if c.get("kind") == kind), None)
