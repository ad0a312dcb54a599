"""The offline agent: deterministic, no network, writes its reasoning from the data.

It inherits the base config, proposes the `key=value` pairs named in the goal or
hypothesis (the human's --set pairs are applied by the caller on top), and explains each
change with the setting's own documentation and the guardrails it touches.
"""

from __future__ import annotations

import re
from typing import Any

from agent.base import (Analysis, AnalysisContext, CommitContext, CommitDraft, Plan, PlanContext)
from minimind.config import parse_value
from minimind.guardrails import EVAL_GUARDRAILS, danger_text, rule_from, rule_text

# `name=value` in free text; values end at whitespace or , ; ) so prose around them is left out.
_PAIR = re.compile(r"(?<![\w.])([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*){0,2})\s*=\s*([^\s,;)]+)")

# Which guardrail a setting's change puts under watch, and why. `{name}` placeholders are
# filled with that guardrail's danger side from the lab's own settings.
_RISKS = {
    "preset": "a preset change alters the whole block; train/inference ratio shows whether the training path still matches decoding",
    "knowledge_num": "bank size changes coverage and selection entropy; watch memory entropy (danger {memory_entropy})",
    "num_candidates": "fewer candidates lower the entropy ceiling (ln of num_candidates); watch memory entropy",
    "freeze_ratio": "frozen entries cannot adapt; too few frozen lets EMA overwrite real facts",
    "ema_decay": "faster EMA moves entries toward training batches; watch repetition and train/inference ratio",
    "ema_update_freq": "EMA cadence changes how quickly entries drift from their source text",
    "learning_rate": "a higher learning rate risks a collapsing train loss (danger {train_loss}) or divergence",
    "max_steps": "more steps on small data invites memorisation; watch smoothed train loss (danger {train_loss})",
    "epochs": "more passes over the same documents invite memorisation; watch train/inference ratio (danger {train_inference_ratio})",
    "dim": "width changes capacity; compare inference loss, not only train loss",
    "n_layers": "depth changes capacity and the number of memory reads per token",
    "knowledge_length": "longer entries dilute each entry's mean embedding",
    "knowledge_dim": "the product-key dimension sets how finely queries can tell entries apart",
}


def _dangers(guardrails: dict[str, dict]) -> dict[str, str]:
    """{name: 'below 0.1'} from the lab's rules, for the placeholders above."""
    return {name: danger_text(name, rule_from(spec)) for name, spec in guardrails.items()}


def _guardrail_sentence(guardrails: dict[str, dict]) -> str:
    """What the guardrails will do, stated from the lab's settings."""
    by_action: dict[str, list[str]] = {}
    for name, spec in guardrails.items():
        when = "at each evaluation" if name in EVAL_GUARDRAILS else "at every log step"
        by_action.setdefault(spec.get("action", "flag"), []).append(f"{rule_text(name, rule_from(spec)).rsplit(' (', 1)[0]} ({when})")
    words = {"stop": "stop the run on", "flag": "flag", "none": "only report"}
    parts = [f"{words[action]} {', '.join(items)}" for action, items in by_action.items()]
    return "Guardrails " + "; they ".join(parts) + "."


def _memory_query_sentence(checks: list[dict[str, Any]]) -> str:
    """What the preflight check verified about the memory query, never more (the 1.4.3 lesson)."""
    result = next((c for c in checks if c.get("id") == "memory_query"), None)
    if result is not None and result.get("status") == "passed":
        return ("The preflight check verified that the memory layer reads the bank with the attention output h_attn "
                "as the query (the 1.4.3 lesson: x + h_attn froze selection, train loss 0.006 vs inference loss 29.34).")
    if result is not None and result.get("status") == "failed":
        return (f"The preflight check memory_query FAILED: {result.get('detail')}. This is the architecture the 1.4.3 "
                "lesson forbids (train loss 0.006 vs inference loss 29.34); expect frozen memory selection.")
    detail = f" ({result.get('detail')})" if result else ""
    return ("Whether the memory layer's query is the attention output h_attn (the 1.4.3 lesson) was not verified"
            f"{detail}; check the diff by hand.")


def pairs_in_text(text: str) -> list[tuple[str, Any]]:
    """[(key, parsed value)] for every `key=value` in free text, in order."""
    return [(key, parse_value(value)) for key, value in _PAIR.findall(text)]


def _schema_key(key: str, schema: dict[str, dict]) -> str | None:
    """'dim' -> 'model.dim' where exactly one schema key ends with it; dotted keys as given."""
    if key in schema:
        return key
    matches = [k for k in schema if k.endswith("." + key)]
    return matches[0] if len(matches) == 1 else None


def _flat_get(config: dict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


class OfflineAgent:
    name = "offline"

    def plan(self, ctx: PlanContext) -> Plan:
        changes: dict[str, Any] = {}
        for key, value in pairs_in_text(f"{ctx.goal}\n{ctx.hypothesis}"):
            full = _schema_key(key, ctx.config_schema)
            if full is not None:
                changes[full] = value
        rationale = {}
        for key in changes:
            spec = ctx.config_schema[key]
            rationale[key] = f"named in the goal/hypothesis; {spec.get('help', '').rstrip('.')}"
        model = ctx.base_config.get("model", {})
        train = ctx.base_config.get("train", {})
        base_text = f"experiment {ctx.base}" if ctx.base else "the lab's default settings"
        lines = [
            f"Starting point: {base_text} — preset `{model.get('preset')}`, dim {model.get('dim')}, "
            f"{model.get('n_layers')} layers, batch {train.get('batch_size')}, learning rate {train.get('learning_rate')}"
            + (f", max_steps {train.get('max_steps')}." if train.get("max_steps") else "."),
        ]
        human = [(_schema_key(k, ctx.config_schema) or k, v) for k, v in ctx.sets]
        all_changes = [(k, v) for k, v in changes.items() if k not in dict(human)] + human
        # a value equal to the base's is not a change
        all_changes = [(k, v) for k, v in all_changes if _flat_get(ctx.base_config, k) != v]
        if all_changes:
            listed = ", ".join(f"`{k}` {_flat_get(ctx.base_config, k)!r} → {v!r}" for k, v in all_changes)
            lines.append(f"Changes for this experiment: {listed}. Everything else is inherited unchanged, "
                         "so any difference in the results is attributable to these settings and to the model code diff.")
        else:
            lines.append("No configuration change was named, so this run isolates the effect of the code in "
                         "`models/model.py` (see the git change record) against the same settings.")
        if ctx.model_diff.strip():
            changed = sum(1 for line in ctx.model_diff.splitlines() if line.startswith(("+", "-"))
                          and not line.startswith(("+++", "---")))
            against = f"the base snapshot models/model_{ctx.base.replace('.', '_')}.py" if ctx.base else "git HEAD"
            lines.append(f"`models/model.py` differs from {against} by {changed} changed line(s) (see the git change "
                         "record); the snapshot keeps this exact code for later evaluation.")
        if ctx.base_eval:
            inf, val = ctx.base_eval.get("inference_loss"), ctx.base_eval.get("val_loss")
            if isinstance(inf, (int, float)) and isinstance(val, (int, float)):
                lines.append(f"The base measured val loss {val:.4g} and inference loss {inf:.4g}; these are the numbers to beat.")
        preset = _flat_get(ctx.base_config, "model.preset")
        for key, value in all_changes:
            if key.endswith("preset"):
                preset = value
        if preset in ("memory", "hybrid"):
            lines.append(_memory_query_sentence(ctx.checks))
        lines.append(_guardrail_sentence(ctx.guardrails))
        dangers = _dangers(ctx.guardrails)
        risks = [f"`{key}`: {_RISKS[key.split('.')[-1]].format(**dangers)}" for key, _ in all_changes
                 if key.split(".")[-1] in _RISKS]
        if not risks:
            risks = ["memorisation of the small corpus: the train/inference loss ratio and repetition rate are the checks"]
        expected = (ctx.expect or f"as the hypothesis states: {ctx.hypothesis}").strip()
        return Plan(thinking="\n\n".join(lines), changes=changes, rationale=rationale, expected=expected,
                    risks=risks, backend=self.name)

    def analyse(self, ctx: AnalysisContext) -> Analysis:
        m, ev = ctx.metrics_summary, ctx.eval
        training = (f"Training ran {m.get('steps', 0)} optimizer steps in {m.get('duration', '—')}; loss went from "
                    f"{_n(m.get('first_loss'))} to {_n(m.get('last_loss'))} (lowest {_n(m.get('min_loss'))}, smoothed "
                    f"{_n(m.get('smoothed_loss'))}) at about {_n(m.get('tokens_per_s'))} tokens/s.")
        if ctx.state == "guardrail_stopped":
            training += f" The run was stopped by a guardrail: {ctx.stop_reason}. The checkpoint at the stop was evaluated."
        inference = (f"Teacher-forced validation loss {_n(ev.get('val_loss'))}; inference loss through the KV-cached "
                     f"decode path {_n(ev.get('inference_loss'))}, a train/inference ratio of "
                     f"{_n(ev.get('train_inference_ratio'))}. Greedy continuations repeat {_pct(ev.get('repetition_rate'))} "
                     f"of their 4-grams (distinct-2 {_n(ev.get('distinct_2'))}).")
        recall = ev.get("recall") or {}
        if recall:
            parts = [f"{split} P@1 {_n(r.get('p_at_1'))} (n={r.get('n')})" for split, r in recall.items()]
            inference += " Factual recall: " + ", ".join(parts) + "."
        deep = []
        better = [r for r in ctx.comparison if r.get("mark") == "✅"]
        worse = [r for r in ctx.comparison if r.get("mark") == "❌"]
        noise = [r for r in ctx.comparison if r.get("mark") == "≈"]
        if ctx.base_eval is None:
            deep.append("There is no evaluated base to compare with, so these numbers are the reference for the next experiment.")
        else:
            if better:
                deep.append("Better than the base beyond noise: " + ", ".join(_moved(r) for r in better) + ".")
            if worse:
                deep.append("Worse than the base beyond noise: " + ", ".join(_moved(r) for r in worse) + ".")
            if noise:
                deep.append("Within noise (the interval of the difference includes zero): "
                            + ", ".join(r["metric"] for r in noise) + ".")
            if not better and not worse and not noise:
                deep.append("The base has no per-item data, so no change can be told from noise.")
        control = (ctx.intervals or {}).get("held_out_control")
        if control and control.get("base") is not None:
            deep.append("Chance control: " + control["text"] + ".")
        held, mem = recall.get("held_out", {}), recall.get("mem_only", {})
        preset = (ctx.model_config or {}).get("preset")
        if preset in ("memory", "hybrid") and held.get("p_at_1") is not None and mem.get("p_at_1") is not None:
            gap = mem["p_at_1"] - held["p_at_1"]
            deep.append(f"Facts only in the memory bank: P@1 {_n(mem['p_at_1'])} against {_n(held['p_at_1'])} for held-out "
                        f"facts seen nowhere (the chance control), a difference of {gap:+.3f}.")
        reading = (ctx.intervals or {}).get("bank_reading")
        if reading:  # only memory presets have retrieval diagnostics
            deep.append("Bank reads, the direct measure of whether the memory is used: " + reading["text"] + ".")
        degenerate = self._degenerate(ctx)
        if degenerate:
            deep.append("Degenerate continuations: " + "; ".join(degenerate) + ".")
        history = [h for h in ctx.guardrail_history if h.get("to") in ("watch", "danger")]
        if history:
            deep.append("Guardrail history: " + ", ".join(
                f"{h['name']} {h.get('from') or 'unset'} → {h['to']} at step {h.get('step')} ({_n(h.get('value'))})"
                for h in history[:6]) + ".")
        dangers = {n: g for n, g in (ev.get("guardrails") or {}).items() if g.get("level") == "danger"}
        if dangers:
            deep.append("Guardrails in danger: " + ", ".join(
                f"{n} = {_n(g.get('value'))}" + (f" ({danger_text(n, rule_from(ctx.guardrails[n]))})" if n in ctx.guardrails else "")
                for n, g in dangers.items())
                        + ". These are the signs of the 1.4.3 failure mode and outrank any loss improvement.")
        else:
            deep.append("No guardrail is in danger.")
        conclusion = self._conclusion(ctx, dangers)
        next_steps = self._next_steps(ctx, dangers)
        return Analysis(training_results=training, inference_evaluation=inference, deep_analysis="\n\n".join(deep),
                        conclusion=conclusion, next_steps=next_steps, backend=self.name)

    @staticmethod
    def _degenerate(ctx: AnalysisContext) -> list[str]:
        """Samples whose seq-rep-4 is past the lab's repetition threshold (its safe side)."""
        rule = ctx.guardrails.get("repetition_rate") or {}
        limit = rule.get("safe")
        if not isinstance(limit, (int, float)):
            return []
        out = []
        for i, sample in enumerate(ctx.samples, 1):
            rep = sample.get("repetition")
            if isinstance(rep, (int, float)) and rep > limit:
                out.append(f"sample {i} \"{_first_line(str(sample.get('generated', '')), 60)}\" repeats "
                           f"(seq-rep-4 {rep:.3g}, above {limit:g})")
        return out

    @staticmethod
    def _conclusion(ctx: AnalysisContext, dangers: dict) -> str:
        rows = {r["metric"]: r for r in ctx.comparison}
        moved = [_moved(rows[name]) for name in ("inference_loss", "val_loss")
                 if name in rows and rows[name].get("base") is not None]
        parts = [f"Against {ctx.base}: " + ", ".join(moved) + "." if moved and ctx.base else
                 "This run sets the reference numbers for the experiments built on it."]
        meaning = {
            "supported": "The change did what the hypothesis predicted at this scale; keep it as the new base.",
            "refuted": "The change did not deliver the predicted effect at this scale; the negative result is kept on record.",
            "inconclusive": "The numbers do not decide the hypothesis either way.",
        }[ctx.verdict]
        parts.append(meaning)
        if dangers:
            parts.append("Guardrail(s) in danger (" + ", ".join(sorted(dangers)) + ") must be resolved before building on it.")
        return " ".join(parts)

    @staticmethod
    def _next_steps(ctx: AnalysisContext, dangers: dict) -> list[str]:
        steps = []
        if "train_inference_ratio" in dangers or "repetition_rate" in dangers:
            steps.append("Roll back the latest architecture change and check that the memory query is h_attn.")
        if "memory_entropy" in dangers:
            steps.append("Increase query diversity (more candidates or a diversity loss) before training longer.")
        reading = (ctx.intervals or {}).get("bank_reading")
        if reading and not reading["above_chance"]:
            steps.append("Make the query find the asked fact's entry (its hit@C is no better than a random fact's): "
                         "inspect it with minimind memory show on a probe prompt before changing anything else.")
        control = (ctx.intervals or {}).get("held_out_control") or {}
        if control.get("suspicious"):
            steps.append("Check the evaluation: held-out recall moved beyond noise, which a model change should not do.")
        if ctx.verdict == "supported":
            steps.append("Repeat with another seed to confirm the effect is larger than run-to-run noise.")
        elif ctx.verdict == "refuted":
            steps.append("Revert this change, or test a smaller step of it against the same base.")
        else:
            wide = [r for r in ctx.comparison if r.get("mark") == "≈" and r.get("ci")]
            if wide:
                r = min(wide, key=lambda r: r["ci"]["n"])
                steps.append(f"Evaluate on more samples (eval.num_samples; {r['metric']} had n={r['ci']['n']}) or train "
                             "longer, so the difference can exceed its interval.")
            else:
                steps.append("Evaluate the base again with this minimind so both sides have per-item data and intervals.")
        if ctx.state == "guardrail_stopped":
            steps.append("Investigate the guardrail stop before building on this checkpoint.")
        return steps

    def draft_commit(self, ctx: CommitContext) -> CommitDraft:
        changes = ", ".join(f"{k}: {_short(a)} → {_short(b)}" for k, a, b in ctx.config_changes[:6]) or "no config change"
        title = f"Experiment {ctx.version}: {_first_line(ctx.goal, 60)}"  # code appends the verdict
        improvements = [f"Tested: {_first_line(ctx.hypothesis, 160)}", f"Config: {changes}"]
        core: dict[str, list[str]] = {}
        for path in ctx.files:
            if path.startswith("experiment/"):
                core[path] = ["experiment record: thinking, configuration, execution, results, analysis, conclusion"]
            elif path.endswith("run.sh"):
                core[path] = ["launch script: train, evaluate, analyse"]
            elif path.endswith("config.yaml"):
                core[path] = [f"resolved config ({changes})"]
            elif path.startswith("models/model_"):
                core[path] = ["snapshot of models/model.py as trained"]
            elif path == "models/model.py":
                core[path] = ["model code changed for this experiment"] if ctx.model_changed else ["model code as run"]
        return CommitDraft(title=title, improvements=improvements, core_changes=core, results=list(ctx.result_lines),
                           next_steps=list(ctx.next_steps), backend=self.name)


def _n(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value is None else str(value)
    return f"{value:.4g}"


def _moved(row: dict) -> str:
    ci = row.get("ci")
    interval = f" (Δ {ci['confidence']:.0%} CI [{ci['low']:+.3g}, {ci['high']:+.3g}])" if ci else ""
    return f"{row['metric']} {_n(row.get('base'))} → {_n(row.get('new'))}{interval}"


def _pct(value: Any) -> str:
    return "—" if not isinstance(value, (int, float)) else f"{100 * value:.1f}%"


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "..."


def _first_line(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
