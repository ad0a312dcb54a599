"""Guardrail rules (PRODUCT.md section 6) as pure functions: no torch, no files.

The trainer calls `check_train` at every log step and `check_eval` at every periodic
evaluation; the evaluator calls `check_final` for all of them. Where each one's value comes
from is `SOURCES`, read by all three. The agent only explains these results, it never
computes or changes them. The guardrails' names are the rule fields of `GuardrailsConfig`
(the lab's settings), and every threshold anyone shows or writes is read from those
settings, never restated.

The memory-entropy guardrail reads the selection diversity of the worst memory layer: the
entropy of the entries that windows of 64 consecutive positions chose (models/model.py
`SELECTION_WINDOW`, docs/LAB_MEMORY.md). Until this version it read the entropy of each
token's softmax over its candidates, which stays near ln 32 whichever entries are chosen;
that number is still reported, as `candidate_entropy`, and results stored by older
versions are read through `upgrade_results` / `upgrade_eval`.

Direction comes from the thresholds themselves: a rule with safe > danger (train loss,
memory entropy) means low values are bad; safe < danger (ratio, repetition) means high
values are bad. Values strictly beyond `safe` are safe, strictly beyond `danger` are
danger, and everything in between (thresholds included) is watch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Optional

from minimind import phrases
from minimind.settings import GuardrailRule, GuardrailsConfig

SAFE, WATCH, DANGER, UNAVAILABLE = "safe", "watch", "danger", "n/a"
NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(GuardrailsConfig)
                               if f.default_factory is not dataclasses.MISSING
                               and isinstance(f.default_factory(), GuardrailRule))
# Where each guardrail's value comes from. "train:KEY": the trainer's log rows (metrics.jsonl),
# judged at every log step. "eval:KEY": an evaluation's result, eval.json's KEY (the trainer's
# periodic eval rows hold it under training/measures.py PERIODIC_KEYS). The trainer judges a
# guardrail by its train source when it has one, else by its eval source at every periodic
# evaluation; the final evaluation judges every guardrail by its eval source, n/a without one.
SOURCES: dict[str, tuple[str, ...]] = {
    "train_loss": ("train:loss_ce", "eval:train_loss"),
    "train_inference_ratio": ("eval:train_inference_ratio",),
    "repetition_rate": ("eval:repetition_rate",),
    "memory_entropy": ("train:memory/selection_entropy", "eval:memory_entropy"),
}
# Train keys judged by their mean over the last smoothing_window rows (the loss is noisy step
# to step), each with the key rows of older versions hold it under; other keys: the last row's.
SMOOTHED = {"loss_ce": "loss"}


def source(name: str, kind: str) -> Optional[str]:
    """The key of guardrail `name`'s `kind` ("train" or "eval") source in SOURCES, or None."""
    for entry in SOURCES[name]:
        prefix, _, key = entry.partition(":")
        if prefix == kind:
            return key
    return None


EVAL_GUARDRAILS = tuple(n for n in NAMES if source(n, "train") is None)  # need an evaluation to measure
LIGHTS = {SAFE: "🟢", WATCH: "🟡", DANGER: "🔴"}
# What each guardrail measures, for prose (the numbers come from the settings); the words, in
# every language, are the phrasebook's.
MEANINGS = phrases.group("guardrail_meaning", "en")
UNITS = {"repetition_rate": "%", "memory_entropy": " nats"}
# Guardrails whose measure changed: name -> (the measure a current result names, the key the
# older measure's value is shown under). A stored result with a value and without this
# `measure` was computed by an older version from the older measure.
MEASURES = {"memory_entropy": ("selection_entropy", "candidate_entropy")}
COMPACT_EXTRAS = ("measure", "candidate_entropy")  # kept by levels_only besides value and level


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def low_is_bad(rule: GuardrailRule) -> bool:
    return rule.safe > rule.danger


def level(value: Optional[float], rule: GuardrailRule) -> str:
    """"safe" | "watch" | "danger" for a value; "n/a" when there is no finite value."""
    if not _finite(value):
        return UNAVAILABLE
    if low_is_bad(rule):
        if value > rule.safe:
            return SAFE
        return DANGER if value < rule.danger else WATCH
    if value < rule.safe:
        return SAFE
    return DANGER if value > rule.danger else WATCH


def smoothed_train_loss(losses: Iterable[float], window: int) -> Optional[float]:
    """Mean of the last `window` finite logged CE losses, or None if there are none."""
    finite = [float(x) for x in losses if _finite(x)]
    if not finite:
        return None
    tail = finite[-max(1, int(window)):]
    return sum(tail) / len(tail)


def _result(name: str, value: Optional[float], rule: GuardrailRule) -> dict[str, Any]:
    out = {
        "value": float(value) if _finite(value) else None,
        "level": level(value, rule),
        "action": rule.action,
        "safe": rule.safe,
        "danger": rule.danger,
    }
    if name in MEASURES and _finite(value):
        out["measure"] = MEASURES[name][0]
    return out


def evaluate(values: Mapping[str, Optional[float]], cfg: GuardrailsConfig) -> dict[str, dict[str, Any]]:
    """{name: {value, level, action, safe, danger}} for each guardrail named in `values`."""
    return {name: _result(name, value, getattr(cfg, name)) for name, value in values.items()
            if name in NAMES}


def _last(metrics_history: list[Mapping[str, Any]], key: str) -> Optional[float]:
    for row in reversed(metrics_history):
        if _finite(row.get(key)):
            return float(row[key])
    return None


def candidate_entropy_of(row: Mapping[str, Any], prefix: str = "memory/") -> Optional[float]:
    """The candidate-softmax entropy of a metrics row or memory-stats dict: `candidate_entropy`,
    or `entropy` as model files before selection diversity named it."""
    for key in ("candidate_entropy", "entropy"):
        if _finite(row.get(prefix + key)):
            return float(row[prefix + key])
    return None


def _train_value(metrics_history: list[Mapping[str, Any]], key: str, cfg: GuardrailsConfig) -> Optional[float]:
    if key not in SMOOTHED:
        return _last(metrics_history, key)
    older = SMOOTHED[key]
    values = [row.get(key, row.get(older)) for row in metrics_history if "step" in row
              and (key in row or older in row)]
    return smoothed_train_loss(values, cfg.smoothing_window)


def check_train(metrics_history: list[Mapping[str, Any]], cfg: GuardrailsConfig) -> dict[str, dict[str, Any]]:
    """The guardrails with a train source (SOURCES) from the logged rows so far.

    Rows are metrics.jsonl objects; train rows carry `loss_ce` (or `loss`), memory
    models also `memory/selection_entropy` (the memory-entropy guardrail's measure) and
    `memory/candidate_entropy` (shown beside it). Eval rows (no `loss_ce`) are ignored
    for smoothing.
    """
    values = {name: _train_value(metrics_history, key, cfg) for name in NAMES
              if (key := source(name, "train")) is not None}
    results = evaluate(values, cfg)
    for row in reversed(metrics_history):
        candidate = candidate_entropy_of(row)
        if candidate is not None and "memory_entropy" in results:
            results["memory_entropy"]["candidate_entropy"] = candidate
            break
    return results


def eval_values(eval_summary: Mapping[str, Any], names: Optional[Iterable[str]] = None) -> dict[str, Optional[float]]:
    """{name: value} of the guardrails `names` (all of them by default) by their eval sources
    (SOURCES) in an evaluation summary (eval.json keys); None without an eval source or its key."""
    return {name: eval_summary.get(key) if (key := source(name, "eval")) is not None else None
            for name in (NAMES if names is None else names)}


def check_eval(eval_summary: Mapping[str, Any], cfg: GuardrailsConfig) -> dict[str, dict[str, Any]]:
    """The guardrails only an evaluation measures (EVAL_GUARDRAILS) from an evaluation summary."""
    return evaluate(eval_values(eval_summary, EVAL_GUARDRAILS), cfg)


def check_final(eval_summary: Mapping[str, Any], cfg: GuardrailsConfig) -> dict[str, dict[str, Any]]:
    """Every guardrail judged from a final evaluation's summary (eval.json keys)."""
    return evaluate(eval_values(eval_summary), cfg)


def describe(name: str, result: Mapping[str, Any]) -> str:
    """One line, e.g. 'train_loss 0.05 < 0.1 (danger)'."""
    value = result.get("value")
    if value is None:
        return f"{name} n/a"
    lvl = result.get("level")
    threshold = result["danger"] if lvl == DANGER else result["safe"]
    low_bad = result["safe"] > result["danger"]
    if lvl == SAFE:
        op = ">" if low_bad else "<"
    elif lvl == DANGER:
        op = "<" if low_bad else ">"
    else:
        op = "near"
    return f"{name} {value:.4g} {op} {threshold:g} ({lvl})"


def should_stop(results: Mapping[str, Mapping[str, Any]]) -> Optional[str]:
    """The stop reason of the first danger whose action is `stop`, else None."""
    for name in NAMES:
        result = results.get(name)
        if result and result.get("level") == DANGER and result.get("action") == "stop":
            return describe(name, result)
    return None


def level_changes(old: Mapping[str, Mapping[str, Any]], new: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """{name: {from, to, value}} for guardrails whose level differs between two results.

    A guardrail absent from `old` counts as a change from None (the first report).
    """
    changes: dict[str, dict[str, Any]] = {}
    for name, result in new.items():
        before = (old.get(name) or {}).get("level")
        if result.get("level") != before:
            changes[name] = {"from": before, "to": result.get("level"), "value": result.get("value")}
    return changes


def levels_only(results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """{name: {value, level}}: the compact form stored in state.json and eval.json (plus the
    measure and the candidate entropy of the memory-entropy guardrail, where known)."""
    return {name: {"value": r.get("value"), "level": r.get("level"),
                   **{k: r[k] for k in COMPACT_EXTRAS if r.get(k) is not None}} for name, r in results.items()}


def upgrade_results(results: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """Stored guardrail results as this version reads them. An older version's memory-entropy
    value was the candidate entropy, blind to fixation: it becomes `candidate_entropy`, and the
    guardrail itself was not measured (n/a). Current results come back unchanged."""
    out = dict(results or {})
    for name, (measure, older) in MEASURES.items():
        result = out.get(name)
        if isinstance(result, Mapping) and result.get("value") is not None and result.get("measure") != measure:
            out[name] = {"value": None, "level": UNAVAILABLE, older: result["value"]}
    return out


def upgrade_eval(ev: Optional[Mapping[str, Any]]) -> Optional[dict[str, Any]]:
    """An eval.json as this version reads it. Before selection diversity, `memory_entropy` held
    the candidate entropy: it moves to `memory_candidate_entropy` and the selection measures
    read as absent (None), so no comparison ever sets one measure against the other."""
    if ev is None:
        return None
    out = dict(ev)
    if "memory_candidate_entropy" not in out:
        out["memory_candidate_entropy"] = out.get("memory_entropy")
        out["memory_entropy"] = out["memory_selection_distinct"] = None
        if isinstance(out.get("memory"), Mapping):
            memory = dict(out["memory"])
            for key in [k for k in memory if k == "entropy" or k.endswith("/entropy")]:
                memory[key[:-len("entropy")] + "candidate_entropy"] = memory.pop(key)
            out["memory"] = memory
    if isinstance(out.get("guardrails"), Mapping):
        out["guardrails"] = upgrade_results(out["guardrails"])
    return out


def _show(name: str, value: float) -> str:
    if UNITS.get(name) == "%":
        return f"{100 * value:g}%"
    return f"{value:g}{UNITS.get(name, '')}"


def danger_text(name: str, rule: GuardrailRule) -> str:
    """'below 0.1', 'above 10', 'above 80%', 'below 2 nats': the danger side, from the settings."""
    side = "below" if low_is_bad(rule) else "above"
    return f"{side} {_show(name, rule.danger)}"


def rules_of(cfg: GuardrailsConfig) -> dict[str, dict[str, Any]]:
    """{name: {safe, danger, action}}: the lab's rules as plain data (agent contexts, prompts)."""
    return {name: dataclasses.asdict(getattr(cfg, name)) for name in NAMES}


def rule_from(spec: Mapping[str, Any]) -> GuardrailRule:
    return GuardrailRule(safe=spec["safe"], danger=spec["danger"], action=spec.get("action", "flag"))


def flipped(cfg: GuardrailsConfig) -> list[str]:
    """One sentence per guardrail whose thresholds point the other way from what it measures.

    Direction comes from the thresholds, so a `safe` set past `danger` silently turns a
    guardrail around (high repetition "safe"); what each measures is bad in the direction
    of the settings' own defaults, which therefore decide it.
    """
    defaults = GuardrailsConfig()
    problems = []
    for name in NAMES:
        rule, default = getattr(cfg, name), getattr(defaults, name)
        if low_is_bad(rule) == low_is_bad(default):
            continue
        side = "below" if rule.safe < rule.danger else "above"
        bad = "low" if low_is_bad(default) else "high"
        problems.append(f"guardrails.{name}: safe {rule.safe:g} is {side} danger {rule.danger:g}, but for the "
                        f"{MEANINGS.get(name, name)} {bad} values are bad (safe must be "
                        f"{'above' if low_is_bad(default) else 'below'} danger)")
    return problems
