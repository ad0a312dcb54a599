"""Numbers that decide: base → new comparison rows, the hypothesis verdict, result lines.

All pure functions over eval.json dicts (standard library only). The agent explains
these; it never computes or changes them.

Noise. eval.json (minimind ≥ 0.2) keeps per-item measurements under `per_item`: the
teacher-forced and the inference loss of every validation document (summed CE and token
count), the recall hit and reciprocal rank of every probe, the seq-rep-4 of every greedy
sample, each keyed by the document index or probe id. A base → new comparison on the same
documents/probes gets a **paired** bootstrap interval of the difference (new − base) at
the lab's `eval.confidence` (95% by default). A change is real only when that interval
excludes zero: ✅ in the good direction, ❌ in the bad one, ≈ within noise. Without
per-item data on both sides (a base evaluated by an older minimind), or with fewer than
MIN_ITEMS shared items, there is no interval and a change is only reported, never marked.

Run-to-run noise. The paired interval sees the noise of the evaluation sample (which
documents, which probes), not that of training: two runs that differ only in their seed
differ on every document a little, consistently, so the interval can exclude zero for a
difference that another seed would reverse. Replicates (`minimind new V --seeds N`,
`minimind replicate V --seeds N`) measure it; minimind/noise.py holds the rule. A side is
one eval.json or a list of them (one per replicate, evaluated on the same items):
- both sides with 2 or more replicates: a t interval of the difference of the replicate
  means, holding the seed spread and the evaluation-sample noise (rule `replicates`);
- a side with one run, in a lab that has measured its noise floor (`floors`, the pooled
  seed-to-seed spread per metric): that spread takes the place of the fixed floor (rule `floor`);
- otherwise the paired interval alone, and a relative change smaller than the lab's
  `eval.min_effect` (1% by default) is within noise whatever its interval (rule `sample`);
  the reason then says that run-to-run noise is unmeasured and how to measure it.
Every reason names the noise it used.

Verdict rule. Criteria come from `--expect` when it states them (`METRIC OP VALUE` or
`METRIC OP base`, joined by `and`, `,` or `;`, e.g. `inference_loss < base and
recall.mem_only.p_at_1 > 0.2`, or for SFT `chat_qa.taught.accuracy > base and sft_loss < base`); otherwise from metrics named in the hypothesis and
expectation with a direction word ("lower", "higher", "降低", ...); otherwise the lab's key
metric, inference loss, is expected to improve on the base. A criterion is met when the
interval lies wholly on its side, missed when it lies wholly on the other side, and
within noise otherwise. Every criterion met → supported; any missed → refuted; otherwise
inconclusive. A guardrail in danger never lets a hypothesis count as supported.

The chance control. `held_out` probes ask facts the model has seen nowhere; a change
there is noise unless its interval excludes zero, and then it is flagged as suspicious
(the evaluation, not the model, may have changed).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Any, Optional, Union

from minimind import noise, phrases
from minimind.formats import number

CONFIDENCE = 0.95   # default interval level (the lab's eval.confidence overrides it)
ROUNDS = 1000       # bootstrap resamples
SEED = 0            # the bootstrap's own seed: the same eval files give the same intervals
MIN_EFFECT = 0.01   # default run-to-run floor (the lab's eval.min_effect): see the module docstring
MIN_ITEMS = 8       # fewer paired items give a bootstrap of a handful of distinct resamples: no interval

# metric -> True if higher is better
METRICS: dict[str, Optional[bool]] = {
    "val_loss": False,
    "inference_loss": False,
    "train_loss": False,
    "train_inference_ratio": False,
    "repetition_rate": False,
    "distinct_2": True,
    "memory_entropy": True,             # the worst layer's selection entropy (the guardrail's measure)
    "memory_selection_distinct": True,
    "memory_candidate_entropy": None,   # how evenly a token weighs its candidates: shown, no direction
    "memory_coverage": True,
    # SFT (every stage where the conversation data exists; training/sft.py)
    "sft_loss": False,
    "sft_inference_loss": False,
    "chat.stop_rate": True,
    "chat.repetition_rate": False,
    "chat.mean_reply_tokens": None,  # shown, but longer is neither better nor worse
}
RECALL_SPLITS = ("mem_only", "text_only", "both", "held_out")
CONTROL_SPLIT = "held_out"
CHAT_QA_GROUPS = RECALL_SPLITS + ("taught", "eval_only")  # probe splits, and what SFT did with the fact
DEFAULT_METRIC = "inference_loss"

_LOWER = r"(lower|lowers|reduce[sd]?|decrease[sd]?|drops?|below|less|smaller|fall|falls|降低|下降|减少|更低|减小)"
_HIGHER = r"(higher|raise[sd]?|increase[sd]?|above|more|greater|larger|grows?|rise|rises|提高|增加|提升|更高|增大)"
_IMPROVE = r"(improve[sd]?|better|beats?|outperforms?|改善|改进|优于|更好)"
_WORSE = r"(worse|degrades?|hurts?|变差|恶化|下降)"

MARK_GOOD, MARK_BAD, MARK_NOISE = "✅", "❌", "≈"


Side = Union[None, dict, list]  # one eval.json, or one per replicate (minimind/noise.py)


def replicates_of(side: Side) -> list[dict]:
    """The eval.json of each replicate of a side: a dict is one run, a list several."""
    if side is None:
        return []
    if isinstance(side, dict):
        return [side]
    return [ev for ev in side if isinstance(ev, dict)]


def side_values(side: Side, name: str) -> list[float]:
    """The metric's value in each replicate that measured it."""
    return [v for v in (metric_value(ev, name) for ev in replicates_of(side)) if v is not None]


def side_value(side: Side, name: str) -> Optional[float]:
    """The metric on a side: the mean over its replicates (one run: its value)."""
    values = side_values(side, name)
    return noise.mean(values) if values else None


def metric_value(ev: Optional[dict], name: str) -> Optional[float]:
    """A metric from eval.json by name; 'recall.mem_only.p_at_1' digs into recall, 'chat_qa.taught.accuracy' into chat_qa."""
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


def higher_is_better(name: str) -> Optional[bool]:
    """True/False, or None for a metric without a better direction."""
    if name.startswith(("recall.", "retrieval.", "chat_qa.")):
        return True
    return METRICS.get(name, False)


RETRIEVAL_SPLITS = ("mem_only", "both")   # the splits whose facts sit in the bank
RETRIEVAL_METRICS = ("hit_at_1", "hit_at_c")


def all_metric_names(ev: Optional[dict]) -> list[str]:
    names = list(METRICS)
    for split in RECALL_SPLITS:
        names += [f"recall.{split}.p_at_1", f"recall.{split}.mrr"]
    names += [f"chat_qa.{group}.accuracy" for group in CHAT_QA_GROUPS]
    if isinstance((ev or {}).get("retrieval"), dict):  # memory presets only
        names += [f"retrieval.{split}.{m}" for split in RETRIEVAL_SPLITS for m in RETRIEVAL_METRICS]
    return names


# --- per-item data and the paired bootstrap ------------------------------------------------

def _items(ev: Optional[dict], metric: str) -> Optional[dict[str, tuple[float, float]]]:
    """{key: (numerator, denominator)} of one metric's per-item data; the metric is
    sum(numerators) / sum(denominators) over any set of keys. None when not recorded."""
    per = (ev or {}).get("per_item")
    if not isinstance(per, dict):
        return None
    if metric in ("val_loss", "inference_loss", "sft_loss"):
        block = per.get({"val_loss": "val", "inference_loss": "inference", "sft_loss": "sft"}[metric])
        if not isinstance(block, dict):
            return None
        keys, ce, tokens = block.get("keys"), block.get("ce"), block.get("tokens")
        if not (isinstance(keys, list) and isinstance(ce, list) and isinstance(tokens, list)):
            return None
        return {str(k): (float(c), float(t)) for k, c, t in zip(keys, ce, tokens) if t}
    if metric == "repetition_rate":
        block = per.get("repetition")
        if not isinstance(block, dict):
            return None
        return {str(k): (float(v), 1.0) for k, v in zip(block.get("keys") or [], block.get("values") or [])
                if isinstance(v, (int, float))}
    m = re.fullmatch(r"chat_qa\.([a-z_]+)\.accuracy", metric)
    if m:
        block = (per.get("chat_qa") or {}).get(m.group(1))
        if not isinstance(block, dict):
            return None
        return {str(k): (float(v), 1.0) for k, v in zip(block.get("keys") or [], block.get("hit") or [])}
    m = re.fullmatch(r"recall\.([a-z_]+)\.(p_at_1|mrr)", metric)
    if m:
        block = ((per.get("recall") or {}).get(m.group(1)))
        if not isinstance(block, dict):
            return None
        values = block.get("hit" if m.group(2) == "p_at_1" else "rr") or []
        return {str(k): (float(v), 1.0) for k, v in zip(block.get("keys") or [], values)}
    m = re.fullmatch(r"retrieval\.([a-z_]+)\.(hit_at_1|hit_at_c)", metric)
    if m:
        block = ((per.get("retrieval") or {}).get(m.group(1)))
        if not isinstance(block, dict):
            return None
        return {str(k): (float(v), 1.0) for k, v in zip(block.get("keys") or [], block.get(m.group(2)) or [])}
    return None


def _pooled_items(side: Side, metric: str) -> Optional[dict[str, tuple[float, float]]]:
    """A side's per-item data summed over its replicates, on the items every replicate measured:
    the ratio over any set of keys is then the replicates' mean (their token counts agree)."""
    reps = replicates_of(side)
    if not reps:
        return None
    blocks = [_items(ev, metric) for ev in reps]
    if any(b is None for b in blocks):
        return None
    keys = set(blocks[0])  # type: ignore[arg-type]
    for b in blocks[1:]:
        keys &= set(b)  # type: ignore[arg-type]
    return {k: (sum(b[k][0] for b in blocks), sum(b[k][1] for b in blocks)) for k in keys}  # type: ignore[index]


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..1) of already sorted values."""
    pos = q * (len(sorted_values) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _ratio(pairs: list[tuple[float, float]], idx: list[int]) -> float:
    num = sum(pairs[i][0] for i in idx)
    den = sum(pairs[i][1] for i in idx)
    return num / den if den else 0.0


def paired_interval(new: Side, base: Side, metric: str, confidence: float = CONFIDENCE,
                    rounds: int = ROUNDS) -> Optional[dict[str, Any]]:
    """{low, high, n, confidence, delta, sd} of (new − base) by a paired bootstrap over the items
    both measured (a side of replicates: their mean per item); None when either side has no
    per-item data or they share fewer than MIN_ITEMS items. `sd` is the bootstrap's spread:
    the evaluation-sample noise minimind/noise.py adds to the seed noise."""
    a, b = _pooled_items(base, metric), _pooled_items(new, metric)
    if a is None or b is None:
        return None
    keys = sorted(set(a) & set(b))
    if len(keys) < MIN_ITEMS:
        return None
    base_pairs, new_pairs = [a[k] for k in keys], [b[k] for k in keys]
    n = len(keys)
    rng = random.Random(SEED)
    diffs = []
    for _ in range(rounds):
        idx = [rng.randrange(n) for _ in range(n)]
        diffs.append(_ratio(new_pairs, idx) - _ratio(base_pairs, idx))
    diffs.sort()
    tail = (1 - confidence) / 2
    full = list(range(n))
    return {"low": _percentile(diffs, tail), "high": _percentile(diffs, 1 - tail), "n": n, "confidence": confidence,
            "delta": _ratio(new_pairs, full) - _ratio(base_pairs, full), "sd": noise.sample_sd(diffs) or 0.0}


def value_interval(ev: Side, metric: str, confidence: float = CONFIDENCE,
                   rounds: int = ROUNDS) -> Optional[dict[str, Any]]:
    """{low, high, n, confidence, sd} of one side's metric by a bootstrap over its items."""
    items = _pooled_items(ev, metric)
    if not items or len(items) < MIN_ITEMS:
        return None
    pairs = [items[k] for k in sorted(items)]
    n = len(pairs)
    rng = random.Random(SEED)
    values = sorted(_ratio(pairs, [rng.randrange(n) for _ in range(n)]) for _ in range(rounds))
    tail = (1 - confidence) / 2
    return {"low": _percentile(values, tail), "high": _percentile(values, 1 - tail), "n": n, "confidence": confidence,
            "sd": noise.sample_sd(values) or 0.0}


def change_interval(new: Side, base: Side, metric: str, confidence: float = CONFIDENCE,
                    floors: Optional[dict[str, noise.Floor]] = None) -> Optional[dict[str, Any]]:
    """The interval of new − base with every noise the lab knows in it; its `rule` says which
    (minimind/noise.py): `replicates`, `floor`, or `sample` (the paired interval alone)."""
    nv, bv = side_values(new, metric), side_values(base, metric)
    if not nv or not bv:
        return None
    sample = paired_interval(new, base, metric, confidence)
    ci = noise.difference(nv, bv, confidence, sample["sd"] ** 2 if sample else 0.0, (floors or {}).get(metric))
    if ci is not None:
        return {**ci, "n": sample["n"] if sample else 0}
    return {**sample, "rule": noise.SAMPLE} if sample else None


def target_interval(new: Side, metric: str, confidence: float = CONFIDENCE,
                    floors: Optional[dict[str, noise.Floor]] = None) -> Optional[dict[str, Any]]:
    """The interval of one side's metric (for a fixed target), with the seed noise the lab knows."""
    values = side_values(new, metric)
    sample = value_interval(new, metric, confidence)
    ci = noise.level(values, confidence, sample["sd"] ** 2 if sample else 0.0, (floors or {}).get(metric))
    if ci is not None:
        return {**ci, "n": sample["n"] if sample else 0}
    return {**sample, "rule": noise.SAMPLE} if sample else None


def interval_text(ci: Optional[dict], lang: str = "en") -> str:
    w = _w(lang)
    if not ci:
        return w["no_ci"]
    rule = ci.get("rule")
    key = {noise.REPLICATES: "ci_reps", noise.FLOOR: "ci_floor"}.get(rule, "ci")
    if key in ("ci_reps", "ci_floor") and "n_base" not in ci:  # one side against a fixed target
        key += "_one"
    return w[key].format(conf=f"{ci['confidence']:.0%}", lo=f"{ci['low']:+.4g}", hi=f"{ci['high']:+.4g}", n=ci.get("n"),
                         a=ci.get("n_new"), b=ci.get("n_base", 1), sd=f"{ci.get('seed_sd') or 0:.3g}")


def _mark(ci: Optional[dict], higher_better: bool, rel: Optional[float] = None,
          min_effect: float = MIN_EFFECT) -> Optional[str]:
    """✅ / ❌ when the interval excludes zero and the change passes the run-to-run floor,
    ≈ otherwise, None without an interval."""
    if ci is None:
        return None
    # The fixed relative floor stands in for run-to-run noise only where none was measured.
    if ci.get("rule", noise.SAMPLE) == noise.SAMPLE and rel is not None and abs(rel) < min_effect:
        return MARK_NOISE
    if ci["low"] > 0 or ci["high"] < 0:
        return MARK_GOOD if (ci["low"] > 0) == higher_better else MARK_BAD
    return MARK_NOISE


def compare_rows(new: Side, base: Side, confidence: float = CONFIDENCE,
                 min_effect: float = MIN_EFFECT, floors: Optional[dict[str, noise.Floor]] = None) -> list[dict[str, Any]]:
    """Rows {metric, base, new, delta, rel, ci, mark, better, delta_text} for every metric either has
    (a side of replicates: their means; the interval's `rule` says which noise it holds).

    `better` is True/False only when the interval excludes zero; None otherwise."""
    rows = []
    new_reps = replicates_of(new)
    for name in all_metric_names(new_reps[0] if new_reps else None):
        a, b = side_value(base, name), side_value(new, name)
        if a is None and b is None:
            continue
        delta = None if a is None or b is None else b - a
        rel = None if delta is None or a == 0 else delta / abs(a)
        ci = change_interval(new, base, name, confidence, floors) if delta is not None else None
        mark = _mark(ci, higher_is_better(name), rel, min_effect)
        better = {MARK_GOOD: True, MARK_BAD: False}.get(mark) if mark else None
        row = {"metric": name, "base": a, "new": b, "delta": delta, "rel": rel, "ci": ci, "mark": mark, "better": better}
        rows.append({**row, "delta_text": delta_text(row)})
    return rows


def delta_text(row: dict[str, Any], lang: str = "en") -> str:
    """'-0.5 (-8.3%) 95% CI [...] ✅' for a compare_rows row, in the record's language."""
    delta, rel, ci, mark = row.get("delta"), row.get("rel"), row.get("ci"), row.get("mark")
    if delta is None:
        return "—"
    pct = f" ({rel:+.1%})" if rel is not None else ""
    if ci:
        shown = phrases.phrase("verdict_text.delta_ci", lang, conf=f"{ci['confidence']:.0%}", lo=f"{ci['low']:+.3g}",
                               hi=f"{ci['high']:+.3g}")
        if ci.get("rule") == noise.REPLICATES:
            shown += phrases.phrase("verdict_text.delta_seeds", lang, a=ci["n_new"], b=ci["n_base"])
        elif ci.get("rule") == noise.FLOOR:
            shown += phrases.phrase("verdict_text.delta_floor", lang)
    else:
        shown = phrases.phrase("verdict_text.delta_none", lang)
    return f"{delta:+.4g}{pct}{shown}" + (f" {mark}" if mark else "")


def held_out_control(new: Optional[dict], base: Optional[dict], confidence: float = CONFIDENCE,
                     lang: str = "en") -> Optional[dict[str, Any]]:
    """The chance control: held_out P@1 base → new with its interval; `suspicious` when the
    interval excludes zero (facts seen nowhere should not move)."""
    w = _w(lang)
    metric = f"recall.{CONTROL_SPLIT}.p_at_1"
    a, b = side_value(base, metric), side_value(new, metric)
    if b is None:
        return None
    ci = paired_interval(new, base, metric, confidence) if a is not None else None
    suspicious = bool(ci and (ci["low"] > 0 or ci["high"] < 0))
    key = "ctl_nobase" if a is None else "ctl_noci" if ci is None else "ctl_sus" if suspicious else "ctl_ok"
    text = w[key].format(a=number(a), b=number(b), ci=interval_text(ci, lang))
    return {"base": a, "new": b, "ci": ci, "suspicious": suspicious, "text": text}


def bank_reading(ev: Optional[dict], confidence: float = CONFIDENCE, lang: str = "en") -> Optional[dict[str, Any]]:
    """Does the model read the bank entry of the fact it is asked, more than chance? Per bank
    split: hit@C of the fact's own entry against the shuffled control (a random other fact's
    entry, on the same reads), with a paired interval of the difference. None without
    retrieval diagnostics (a model without memory, or an eval.json older than them).

    {splits: {split: {n, hit_at_1, hit_at_c, control_hit_at_c, ci, above_chance}}, text}"""
    ret = (ev or {}).get("retrieval")
    if not isinstance(ret, dict):
        return None
    per = (((ev or {}).get("per_item") or {}).get("retrieval")) or {}
    splits, parts = {}, []
    for split in RETRIEVAL_SPLITS:
        r, block = ret.get(split) or {}, per.get(split) or {}
        if not r.get("n") or r.get("hit_at_c") is None:
            continue
        keys = block.get("keys") or []
        own = {"per_item": {"retrieval": {split: {"keys": keys, "hit_at_c": block.get("hit_at_c") or []}}}}
        ctrl = {"per_item": {"retrieval": {split: {"keys": keys, "hit_at_c": block.get("control_hit_at_c") or []}}}}
        ci = paired_interval(own, ctrl, f"retrieval.{split}.hit_at_c", confidence) if block.get("control_hit_at_c") else None
        control = (r.get("control") or {}).get("hit_at_c")
        above = bool(ci and ci["low"] > 0)
        splits[split] = {"n": r["n"], "hit_at_1": r.get("hit_at_1"), "hit_at_c": r["hit_at_c"],
                         "control_hit_at_c": control, "ci": ci, "above_chance": above}
        c = ret.get("num_candidates", "C")
        word = phrases.phrase("verdict_text." + ("bank_above" if above else "bank_noci" if ci is None else "bank_chance"), lang)
        parts.append(phrases.phrase("verdict_text.bank_part", lang, split=split, c=c, hit=f"{r['hit_at_c']:.4g}",
                                    control=number(control), ci=interval_text(ci, lang), word=word))
    if not splits:
        return None
    return {"splits": splits, "above_chance": any(s["above_chance"] for s in splits.values()),
            "text": "; ".join(parts)}


# --- criteria and the verdict ----------------------------------------------------------

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
    name = name.replace("hit@1", "hit_at_1").replace("hit@c", "hit_at_c")
    m = (re.fullmatch(r"recall\.(mem_only|text_only|both|held_out)\.(p_at_1|mrr)", name)
         or re.fullmatch(r"retrieval\.(mem_only|both)\.(hit_at_1|hit_at_c)", name))
    if m:
        return name
    m = re.fullmatch(r"chat_qa\.([a-z_]+)\.accuracy", name)
    return name if m and m.group(1) in CHAT_QA_GROUPS else None


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
        "sft loss": "sft_loss", "sft_loss": "sft_loss", "chat qa": "chat_qa.taught.accuracy",
        "chat accuracy": "chat_qa.taught.accuracy", "问答": "chat_qa.taught.accuracy",
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


def _w(lang: str) -> dict[str, str]:
    """The sentences code writes about a verdict and its controls: the phrasebook's `verdict`
    group in the record's language (a zh record has no English sentence from code)."""
    return phrases.group("verdict", lang)


def _check(c: Criterion, new: Side, base: Side, confidence: float,
           min_effect: float = MIN_EFFECT, lang: str = "en",
           floors: Optional[dict[str, noise.Floor]] = None) -> tuple[Optional[bool], str, Optional[str]]:
    """(True met / False missed / None within noise or not measurable, the reason with its
    interval, the noise rule the interval used or None)."""
    w = _w(lang)
    value = side_value(new, c.metric)
    if value is None:
        return None, w["not_measured"].format(m=c.metric), None
    wants_lower = c.op in ("<", "<=")
    if c.target is None:
        target = side_value(base, c.metric)
        if target is None:
            return None, w["no_base"].format(m=c.metric, v=f"{value:.4g}"), None
        ci = change_interval(new, base, c.metric, confidence, floors)
        head = w["head_base"].format(m=c.metric, a=f"{target:.4g}", v=f"{value:.4g}")
        if ci is None:
            return None, w["no_pair"].format(head=head, k=MIN_ITEMS), None
        low, high = ci["low"], ci["high"]
        if ci["rule"] == noise.SAMPLE and target != 0 and abs(value - target) / abs(target) < min_effect:
            return None, w["floor"].format(head=head, ci=interval_text(ci, lang), floor=f"{min_effect:.0%}"), ci["rule"]
    else:
        target = c.target
        ci = target_interval(new, c.metric, confidence, floors)
        head = w["head_target"].format(m=c.metric, v=f"{value:.4g}", op=c.op, t=f"{target:.4g}")
        if ci is None:
            ok = {"<": value < target, "<=": value <= target, ">": value > target, ">=": value >= target}[c.op]
            return ok, w["no_items"].format(head=head, ok=w["meets"] if ok else w["misses"]), None
        low, high = ci["low"] - target, ci["high"] - target
        ci = {**ci, "low": low, "high": high}
    text = interval_text(ci, lang)
    if (wants_lower and high < 0) or (not wants_lower and low > 0):
        return True, w["met"].format(head=head, ci=text), ci["rule"]
    if (wants_lower and low > 0) or (not wants_lower and high < 0):
        return False, w["missed"].format(head=head, ci=text), ci["rule"]
    return None, w["noise"].format(head=head, ci=text), ci["rule"]


def noise_text(rules: list[Optional[str]], floors: Optional[dict[str, noise.Floor]], metrics: list[str],
               min_effect: float, base: Optional[str], lang: str = "en") -> str:
    """Which noise the verdict's intervals held, in words (every rule used, in the order above)."""
    w = _w(lang)
    parts = []
    if noise.REPLICATES in rules:
        parts.append(w["noise_reps"])
    if noise.FLOOR in rules:
        used = [f"{m} {floors[m].describe()}" for m in metrics if floors and m in floors]
        parts.append(w["noise_floor"].format(floors="; ".join(used)))
    if noise.SAMPLE in rules:
        parts.append(w["noise_sample"].format(floor=f"{min_effect:.0%}", base=base or "BASE"))
    return ("; " if lang != "zh" else ";").join(parts)


def criteria_for(hypothesis: str, expect: Optional[str]) -> tuple[list[Criterion], str]:
    """(the criteria a verdict is decided on, where they came from): the expected result's
    (`--expect`), else those the hypothesis implies, else the default metric falling. The
    verdict, the offline plan's "detectable change" and its conclusion all ask this. Pure."""
    stated = parse_criteria(expect)
    if stated:
        return stated, "expected result"
    implied = implied_criteria(f"{hypothesis} {expect or ''}")
    if implied:
        return implied, "hypothesis"
    return [Criterion(DEFAULT_METRIC, "<", None)], "default"


def decide(hypothesis: str, expect: Optional[str], new: Side, base: Side,
           guardrail_levels: Optional[dict[str, str]] = None, confidence: float = CONFIDENCE,
           min_effect: float = MIN_EFFECT, lang: str = "en", floors: Optional[dict[str, noise.Floor]] = None,
           base_version: Optional[str] = None) -> tuple[str, str]:
    """(verdict, reason): supported / refuted / inconclusive, computed from the numbers and
    their intervals; the reason is written in the record's language and names the noise used.
    `new`/`base`: one eval.json each, or one per replicate; `floors`: the lab's measured
    seed-to-seed spread per metric (lifecycle/knowledge/replicates.py), None or {} when unmeasured."""
    w = _w(lang)
    criteria, source = criteria_for(hypothesis, expect)
    if not replicates_of(new):
        return "inconclusive", w["not_evaluated"]
    results = [_check(c, new, base, confidence, min_effect, lang, floors) for c in criteria]
    sep = "; " if lang != "zh" else ";"
    reasons = sep.join(r for _, r, _ in results)
    dangers = sorted(n for n, level in (guardrail_levels or {}).items() if level == "danger")
    if any(ok is False for ok, _, _ in results):
        verdict = "refuted"
    elif all(ok is True for ok, _, _ in results):
        verdict = "supported"
    else:
        verdict = "inconclusive"
    tail = w["source"].format(src=w[f"src.{source}"])
    said = noise_text([rule for _, _, rule in results], floors, [c.metric for c in criteria], min_effect,
                      base_version, lang)
    tail += (sep + said) if said else ""
    if verdict == "supported" and dangers:
        return "inconclusive", reasons + tail + w["danger"].format(names=", ".join(dangers))
    return verdict, reasons + tail


VERDICT_ZH = phrases.group("verdict_word", "zh")  # the verdict's word in a zh record (analysis.json verdict_zh)
VERDICT_MARK = {"supported": "✅", "refuted": "❌", "inconclusive": "≈"}
GUARDRAIL_MARK = {"safe": "✅", "watch": "🟡", "danger": "❌"}

RESULT_KEYS = ("val_loss", "inference_loss", "train_inference_ratio", "repetition_rate",
               "recall.mem_only.p_at_1", "recall.both.p_at_1", "retrieval.mem_only.hit_at_c", "sft_loss",
               "chat_qa.taught.accuracy")


def result_lines(rows: list[dict], guardrails: dict[str, dict], verdict: str, reason: str,
                 keys: tuple[str, ...] = RESULT_KEYS, control: Optional[dict] = None,
                 lang: str = "en", reading: Optional[dict] = None) -> list[str]:
    """The commit message's result lines, computed from the comparison and guardrails:
    ✅ a change outside the interval in the good direction, ❌ in the bad one, ≈ within
    noise, ℹ️ where there is nothing to compare or no interval; guardrails ✅ safe, 🟡 watch, ❌ danger."""
    say = lambda key, **values: phrases.phrase(f"verdict_text.{key}", lang, **values)  # noqa: E731
    lines = [say("line_verdict", mark=VERDICT_MARK[verdict], word=phrases.phrase(f"verdict_word.{verdict}", lang),
                 reason=reason)]
    for row in rows:
        if row["metric"] not in keys or row["new"] is None:
            continue
        if row["base"] is None:
            lines.append(say("line_no_base", metric=row["metric"], new=f"{row['new']:.4g}"))
        elif row.get("mark") is None:
            lines.append(say("line_no_interval", metric=row["metric"], base=f"{row['base']:.4g}", new=f"{row['new']:.4g}"))
        else:
            lines.append(f"{row['mark']} {row['metric']}: {row['base']:.4g} → {row['new']:.4g} ({interval_text(row['ci'], lang)})")
    if control is not None and control.get("base") is not None:
        mark = "⚠️" if control["suspicious"] else "≈"
        lines.append(f"{mark} {control['text']}")
    if reading is not None:  # the bank's own number: is the asked fact's entry read beyond chance
        lines.append(say("line_bank", mark="✅" if reading["above_chance"] else "≈", text=reading["text"]))
    for name, info in sorted(guardrails.items()):
        level = info.get("level")
        if level in GUARDRAIL_MARK:
            lines.append(say("line_guardrail", mark=GUARDRAIL_MARK[level], name=name, value=number(info.get("value")),
                             level=phrases.phrase(f"record_level.{level}", lang)))
    return lines
