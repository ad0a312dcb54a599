"""How a number and an interval are written wherever a person reads them: the record, the
lab notebook, `status`, the lessons, the agent's prompts and the offline prose.

One owner, so that a value reads the same in every place it is shown.
"""

from __future__ import annotations

from typing import Any

MISSING = "—"  # what stands where there is no number
# Characters of an experiment's models/model.py diff that any reader is shown: the record,
# the analysis (either backend) and the commit draft. One limit, so the agent explains the
# diff the human reads, and a prompt stays bounded.
MODEL_DIFF_CHARS = 12_000


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


def bounded_diff(diff: str, limit: int = MODEL_DIFF_CHARS) -> str:
    """The diff as the readers see it: the first `limit` characters and a line saying how many
    more there are."""
    if len(diff) <= limit:
        return diff
    return diff[:limit] + f"\n[... {len(diff) - limit} more characters of the diff not shown]"
