"""How a number and an interval are written wherever a person reads them: the record, the
lab notebook, `status`, the lessons, the agent's prompts and the offline prose.

One owner, so that a value reads the same in every place it is shown.
"""

from __future__ import annotations

from typing import Any

MISSING = "—"  # what stands where there is no number


def number(value: Any) -> str:
    """4 significant digits; MISSING for anything that is not a number (None, text, a bool)."""
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else MISSING


def interval(ci: Any, spec: str = ".2f") -> str:
    """A [low, high] pair (eval.json's intervals) as '[low, high]' with both ends in format
    `spec`; '' when there is no complete pair."""
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or None in ci:
        return ""
    low, high = ci
    return f"[{low:{spec}}, {high:{spec}}]"
