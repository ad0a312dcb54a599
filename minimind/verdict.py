"""Numbers that decide: base → new comparison rows, the hypothesis verdict, ✅/❌ result lines.

All pure functions over eval.json dicts. The agent explains these; it never computes or
changes them.

Verdict rule. Criteria come from `--expect` when it states them (`METRIC OP VALUE` or
`METRIC OP base`, joined by `and`, `,` or `;`, e.g. `inference_loss < base and
recall.mem_only.p_at_1 > 0.2`); otherwise from metrics named in the hypothesis and
expectation with a direction word ("lower", "higher", "降低", ...); otherwise the lab's key
metric, inference loss, is expected to improve on the base. A change within ±1% of the
base is noise. Every criterion met → supported; any clearly missed → refuted; otherwise
inconclusive. A guardrail in danger never lets a hypothesis count as supported.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Optional

NOISE = 0.01  # relative change below this is not a change

# metric -> True if higher is better
METRICS: dict[str, bool] = {
    "val_loss": False,
    "inference_loss": False,
    "train_loss": False,
    "train_inference_ratio": False,
    "repetition_rate": False,
    "distinct_2": True,
    "memory_entropy": True,
    "memory_coverage": True,
}
RECALL_SPLITS = ("mem_only", "text_only", "both", "held_out")
DEFAULT_METRIC = "inference_loss"

_LOWER = r"(lower|lowers|reduce[sd]?|decrease[sd]?|drops?|below|less|smaller|fall|falls|降低|下降|减少|更低|减小)"
_HIGHER = r"(higher|raise[sd]?|increase[sd]?|above|more|greater|larger|grows?|rise|rises|提高|增加|提升|更高|增大)"
_IMPROVE = r"(improve[sd]?|better|beats?|outperforms?|改善|改进|优于|更好)"
_WORSE = r"(worse|degrades?|hurts?|变差|恶化|下降)"


def metric_value(ev: Optional[dict], name: str) -> Optional[float]:
    """A metric from eval.json by name; 'recall.mem_only.p_at_1' digs into recall."""
    if not ev:
        return None
    node: Any = ev
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node):
        return None
    return float(node)


def higher_is_better(name: str) -> bool:
    if name.startswith("recall."):
        return True
    return METRICS.get(name, False)


def all_metric_names(ev: Optional[dict]) -> list[str]:
    names = list(METRICS)
    for split in RECALL_SPLITS:
        names += [f"recall.{split}.p_at_1", f"recall.{split}.mrr"]
    return names


def compare_rows(new: Optional[dict], base: Optional[dict]) -> list[dict[str, Any]]:
    """Rows {metric, base, new, delta, rel, better, delta_text} for every metric either has."""
    rows = []
    for name in all_metric_names(new):
        a, b = metric_value(base, name), metric_value(new, name)
        if a is None and b is None:
            continue
        delta = None if a is None or b is None else b - a
        rel = None if delta is None or a == 0 else delta / abs(a)
        better = None
        if delta is not None and (rel is None or abs(rel) >= NOISE) and delta != 0:
            better = (delta > 0) == higher_is_better(name)
        if delta is None:
            text = "—"
        else:
            arrow = "" if better is None else (" ✅" if better else " ❌")
            pct = f" ({rel:+.1%})" if rel is not None else ""
            text = f"{delta:+.4g}{pct}{arrow}"
        rows.append({"metric": name, "base": a, "new": b, "delta": delta, "rel": rel,
                     "better": better, "delta_text": text})
    return rows


@dataclass(frozen=True)
class Criterion:
    metric: str
    op: str                    # <, <=, >, >=
    target: Optional[float]    # None = the base's value


_CRIT = re.compile(r"([a-z_][a-z0-9_.@]*)\s*(<=|>=|<|>)\s*(base|[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?%?)", re.I)


def parse_criteria(expect: Optional[str]) -> list[Criterion]:
    """Explicit criteria like 'inference_loss < base and recall.both.p_at_1 > 0.3'."""
    if not expect:
        return []
    out = []
    for metric, op, target in _CRIT.findall(expect):
        metric = _canonical(metric)
        if metric is None:
            continue
        value: Optional[float]
        if target.lower() == "base":
            value = None
        elif target.endswith("%"):
            value = float(target[:-1]) / 100
        else:
            value = float(target)
        out.append(Criterion(metric, op, value))
    return out


def _canonical(name: str) -> Optional[str]:
    name = name.lower().replace("p@1", "p_at_1")
    if name in METRICS:
        return name
    m = re.fullmatch(r"recall\.(mem_only|text_only|both|held_out)\.(p_at_1|mrr)", name)
    return name if m else None


def implied_criteria(text: str) -> list[Criterion]:
    """Metrics named in free text with a direction word near them."""
    lowered = text.lower()
    found = []
    aliases = {
        "inference loss": "inference_loss", "inference_loss": "inference_loss", "推理loss": "inference_loss",
        "推理 loss": "inference_loss", "val loss": "val_loss", "val_loss": "val_loss", "validation loss": "val_loss",
        "repetition": "repetition_rate", "重复率": "repetition_rate", "entropy": "memory_entropy",
        "熵": "memory_entropy", "coverage": "memory_coverage", "覆盖": "memory_coverage",
        "distinct": "distinct_2", "recall": "recall.both.p_at_1", "召回": "recall.both.p_at_1",
        "ratio": "train_inference_ratio",
    }
    for phrase, metric in aliases.items():
        for match in re.finditer(re.escape(phrase), lowered):
            window = lowered[max(0, match.start() - 40): match.end() + 40]
            if re.search(_LOWER, window):
                found.append(Criterion(metric, "<", None))
            elif re.search(_HIGHER, window):
                found.append(Criterion(metric, ">", None))
            elif re.search(_IMPROVE, window):
                found.append(Criterion(metric, ">" if higher_is_better(metric) else "<", None))
            elif re.search(_WORSE, window):
                found.append(Criterion(metric, "<" if higher_is_better(metric) else ">", None))
            else:
                continue
            break
    unique: dict[str, Criterion] = {}
    for c in found:
        unique.setdefault(c.metric, c)
    return list(unique.values())


def _check(c: Criterion, new: Optional[dict], base: Optional[dict]) -> tuple[Optional[bool], str]:
    value = metric_value(new, c.metric)
    if value is None:
        return None, f"{c.metric} was not measured"
    target = c.target if c.target is not None else metric_value(base, c.metric)
    if target is None:
        return None, f"{c.metric} = {value:.4g} but there is no base value to compare with"
    against = f"base {target:.4g}" if c.target is None else f"{target:.4g}"
    if c.target is None and target != 0 and abs(value - target) / abs(target) < NOISE:
        return None, f"{c.metric} {target:.4g} → {value:.4g} is within ±{NOISE:.0%} of the base"
    ok = {"<": value < target, "<=": value <= target, ">": value > target, ">=": value >= target}[c.op]
    return ok, f"{c.metric} = {value:.4g} {'meets' if ok else 'misses'} {c.op} {against}"


def decide(hypothesis: str, expect: Optional[str], new: Optional[dict], base: Optional[dict],
           guardrail_levels: Optional[dict[str, str]] = None) -> tuple[str, str]:
    """(verdict, reason): supported / refuted / inconclusive, computed from the numbers."""
    criteria = parse_criteria(expect) or implied_criteria(f"{hypothesis} {expect or ''}")
    source = "expected result" if parse_criteria(expect) else ("hypothesis" if criteria else "default")
    if not criteria:
        criteria = [Criterion(DEFAULT_METRIC, "<", None)]
    if not new:
        return "inconclusive", "the run was not evaluated"
    results = [_check(c, new, base) for c in criteria]
    reasons = "; ".join(r for _, r in results)
    dangers = sorted(n for n, level in (guardrail_levels or {}).items() if level == "danger")
    if any(ok is False for ok, _ in results):
        verdict = "refuted"
    elif all(ok is True for ok, _ in results):
        verdict = "supported"
    else:
        verdict = "inconclusive"
    if verdict == "supported" and dangers:
        return "inconclusive", f"{reasons} (criteria from the {source}), but guardrail {', '.join(dangers)} is in danger"
    return verdict, f"{reasons} (criteria from the {source})"


VERDICT_ZH = {"supported": "支持", "refuted": "否定", "inconclusive": "无法判定"}


def result_lines(rows: list[dict], guardrails: dict[str, dict], verdict: str, reason: str,
                 keys: tuple[str, ...] = ("val_loss", "inference_loss", "train_inference_ratio",
                                          "repetition_rate", "recall.mem_only.p_at_1", "recall.both.p_at_1")) -> list[str]:
    """The commit message's ✅/❌ lines, computed from the comparison and guardrails."""
    lines = [f"{'✅' if verdict == 'supported' else '❌'} hypothesis {verdict}: {reason}"]
    for row in rows:
        if row["metric"] not in keys or row["new"] is None:
            continue
        if row["base"] is None:
            lines.append(f"ℹ️ {row['metric']} = {row['new']:.4g} (no base to compare with)")
        else:
            mark = "✅" if row["better"] else "❌"
            lines.append(f"{mark} {row['metric']}: {row['base']:.4g} → {row['new']:.4g}")
    for name, info in sorted(guardrails.items()):
        level = info.get("level")
        if level in ("safe", "watch", "danger"):
            mark = "❌" if level == "danger" else "✅"
            value = info.get("value")
            shown = f"{value:.4g}" if isinstance(value, (int, float)) else "—"
            lines.append(f"{mark} guardrail {name}: {shown} ({level})")
    return lines
