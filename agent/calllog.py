"""The agent's call log: one JSON line per model call in `runs/V/agent/calls.jsonl`.

Every backend call (claude or offline, success or failure) is appended here with the
request (never the API key or auth headers), the reply, token usage, an estimated cost
and the latency. `summary` adds the log up; the claude backend reads it before each
call to enforce the per-experiment budget (`agent.max_usd`), and `status` shows it.
Standard library only: `status` imports this module.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

CALLS_FILE = "calls.jsonl"
FAILED_DIR = ".failed"  # runs/.failed/<version>-<time>/: the logs of failed `new` attempts
CHARS_PER_TOKEN = 3     # a pessimistic guess (real text averages nearer 4)

# US dollars per million tokens (input, output), matched by model-name prefix, longest
# prefix first. Unknown models get the most expensive row so the budget errs on the
# safe side: an estimate that is too high stops early, one too low overspends.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-6": (5.0, 25.0),
    "claude-opus": (15.0, 75.0),
    "claude-3-opus": (15.0, 75.0),
    "claude-sonnet": (3.0, 15.0),
    "claude-3-5-sonnet": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-haiku-4": (1.0, 5.0),
    "claude-3-5-haiku": (0.8, 4.0),
    "claude-3-haiku": (0.25, 1.25),
    "offline": (0.0, 0.0),
}
DEFAULT_PRICE_PER_MTOK = (15.0, 75.0)

# Keys whose values are credentials wherever they appear in a record.
_SECRET_KEYS = {"api_key", "x-api-key", "authorization", "auth_token", "anthropic_api_key"}
REDACTED = "[redacted]"


def price_for(model: str) -> tuple[float, float]:
    """(input, output) dollars per million tokens for `model`."""
    for prefix in sorted(PRICES_PER_MTOK, key=len, reverse=True):
        if model.startswith(prefix):
            return PRICES_PER_MTOK[prefix]
    return DEFAULT_PRICE_PER_MTOK


def estimate_cost(model: str, input_tokens: int, output_tokens: int) -> float:
    price_in, price_out = price_for(model)
    return (input_tokens * price_in + output_tokens * price_out) / 1_000_000


def _scrub(obj: Any, secrets: tuple[str, ...]) -> Any:
    """A copy of `obj` with credential-named keys and any secret substring redacted."""
    if isinstance(obj, dict):
        return {k: REDACTED if str(k).lower() in _SECRET_KEYS else _scrub(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_scrub(v, secrets) for v in obj]
    if isinstance(obj, str):
        for secret in secrets:
            obj = obj.replace(secret, REDACTED)
        return obj
    return obj


def append_call(log_dir: Path, record: dict[str, Any], *, secrets: Iterable[str] = ()) -> dict[str, Any]:
    """Append one call record to `log_dir/calls.jsonl`; returns the line as written.

    Fills `time`, `usage` and `cost_usd` (from `model` and `usage`) when the caller left
    them out. `secrets` are strings (the API key) replaced wherever they occur.
    """
    secrets = tuple(s for s in secrets if s and len(s) >= 8)
    out = dict(record)
    out.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    usage = out.get("usage") or {}
    out["usage"] = {"input_tokens": int(usage.get("input_tokens") or 0),
                    "output_tokens": int(usage.get("output_tokens") or 0)}
    if out.get("cost_usd") is None:
        out["cost_usd"] = estimate_cost(str(out.get("model", "")), out["usage"]["input_tokens"],
                                        out["usage"]["output_tokens"])
    out = _scrub(out, secrets)
    line = json.dumps(out, ensure_ascii=False, default=str) + "\n"
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    # One write of a whole line in append mode: concurrent appenders never interleave
    # within a line, and a crash loses at most the last (partial) line, which
    # `summary` skips.
    with open(log_dir / CALLS_FILE, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
    return out


def read_calls(log_dir: Path) -> list[dict[str, Any]]:
    """All well-formed records of `log_dir/calls.jsonl` ([] when there is none)."""
    path = Path(log_dir) / CALLS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(record, dict):
            records.append(record)
    return records


def summary(log_dir: Path) -> dict[str, Any]:
    """{"calls", "cost_usd", "input_tokens", "output_tokens"} summed over the log."""
    out: dict[str, Any] = {"calls": 0, "cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0}
    for record in read_calls(log_dir):
        usage = record.get("usage") or {}
        out["calls"] += 1
        out["cost_usd"] += _number(record.get("cost_usd"))
        out["input_tokens"] += int(_number(usage.get("input_tokens")))
        out["output_tokens"] += int(_number(usage.get("output_tokens")))
    return out


def summary_of(log_dirs: Iterable[Path]) -> dict[str, Any]:
    """`summary` added up over several log folders."""
    out: dict[str, Any] = {"calls": 0, "cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0}
    for log_dir in log_dirs:
        for key, value in summary(log_dir).items():
            out[key] += value
    return out


def failed_attempt_logs(runs_dir: Path, version: str) -> list[Path]:
    """The agent log folders of earlier failed `new` attempts of `version`."""
    root = Path(runs_dir) / FAILED_DIR
    if not root.is_dir():
        return []
    return sorted(p / "agent" for p in root.glob(f"{version}-*") if (p / "agent" / CALLS_FILE).is_file())


def estimate_input_tokens(request: dict[str, Any]) -> int:
    """A high estimate of a request's input tokens from its size (no tokenizer offline)."""
    text = json.dumps({k: request.get(k) for k in ("system", "messages", "tools")}, ensure_ascii=False, default=str)
    return len(text) // CHARS_PER_TOKEN + 1


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
