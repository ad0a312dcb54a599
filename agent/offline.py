"""The offline agent: deterministic, no network, writes its reasoning from the data.

It inherits the base config, proposes the `key=value` pairs named in the goal or
hypothesis (the human's --set pairs are applied by the caller on top), and explains each
change with the setting's own documentation and the guardrails it touches.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from agent.base import (Analysis, AnalysisContext, CommitContext, CommitDraft, Plan, PlanContext)
from minimind.config import parse_value
from minimind.formats import interval, number
from minimind.guardrails import EVAL_GUARDRAILS, danger_text, rule_from
from minimind.phrases import group, has, phrase
from minimind.verdict import criteria_for

def _t(lang: str, key: str, **values: Any) -> str:
    """Every sentence the offline agent writes comes from the phrasebook's `offline` group, so a
    zh record gets no English sentence from this agent. Numbers are formatted by the code."""
    return phrase(f"offline.{key}", lang, **values)


def _meaning(name: str, lang: str) -> str:
    key = f"guardrail_meaning.{name}"
    return phrase(key, lang) if has(key) else name


def _join(lang: str, items: list[str]) -> str:
    return phrase("sep.list", lang).join(items)


# `name=value` in free text; values end at whitespace or , ; ) so prose around them is left out.
_PAIR = re.compile(r"(?<![\w.])([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*){0,2})\s*=\s*([^\s,;)]+)")

# Which guardrail a setting's change puts under watch, and why, is the phrasebook's
# `offline_risk` group (by the setting's name); its `{name}` placeholders are filled with that
# guardrail's danger side from the lab's own settings.


def _side(name: str, spec: dict, lang: str) -> tuple[str, str]:
    """('below'/'低于', '0.1') of a guardrail's danger side, from the lab's settings."""
    from minimind.guardrails import UNITS, low_is_bad

    rule = rule_from(spec)
    value = rule.danger
    shown = f"{100 * value:g}%" if UNITS.get(name) == "%" else f"{value:g}{UNITS.get(name, '')}"
    return _t(lang, "below" if low_is_bad(rule) else "above"), shown


def _dangers(guardrails: dict[str, dict], lang: str = "en") -> dict[str, str]:
    """{name: 'below 0.1'} from the lab's rules, for the placeholders of the risks."""
    if lang != "zh":
        return {name: danger_text(name, rule_from(spec)) for name, spec in guardrails.items()}
    return {name: " ".join(_side(name, spec, lang)) for name, spec in guardrails.items()}


def _guardrail_sentence(guardrails: dict[str, dict], lang: str = "en") -> str:
    """What the guardrails will do, stated from the lab's settings."""
    by_action: dict[str, list[str]] = {}
    for name, spec in guardrails.items():
        side, value = _side(name, spec, lang)
        when = _t(lang, "when_eval" if name in EVAL_GUARDRAILS else "when_log")
        by_action.setdefault(spec.get("action", "flag"), []).append(
            _t(lang, "rule", meaning=_meaning(name, lang), side=side, value=value, when=when))
    parts = [f"{_t(lang, 'act_' + action)} {_join(lang, items)}" for action, items in by_action.items()
             if action in ("stop", "flag", "none")]
    return _t(lang, "guard", parts=_t(lang, "guard_join").join(parts))


def _memory_query_sentence(checks: list[dict[str, Any]], lang: str = "en") -> str:
    """What the preflight check verified about the memory query, never more (the 1.4.3 lesson)."""
    result = next((c for c in checks if c.get("id") == "memory_query"), None)
    if result is not None and lang == "zh":
        result = {**result, **(result.get("zh") or {})}  # the check's own zh detail (lifecycle/knowledge/checks.py)
    if result is not None and result.get("status") == "passed":
        return _t(lang, "q_passed")
    if result is not None and result.get("status") == "failed":
        return _t(lang, "q_failed", detail=result.get("detail"))
    detail = f" ({result.get('detail')})" if result else ""
    return _t(lang, "q_unknown", detail=detail)


def _base_guardrails(base_eval: Optional[dict], guardrails: dict[str, dict], lang: str) -> tuple[Optional[str], list[str]]:
    """(a sentence of the base's guardrail values and levels, risks for those already past
    their safe threshold): how close the base came to danger, from the lab's thresholds."""
    items, risks = [], []
    for name, info in ((base_eval or {}).get("guardrails") or {}).items():
        value, level, spec = info.get("value"), info.get("level"), guardrails.get(name)
        if not isinstance(value, (int, float)) or spec is None or level not in ("safe", "watch", "danger"):
            continue
        side, danger = _side(name, spec, lang)
        items.append(_t(lang, "base_guard_item", meaning=_meaning(name, lang), value=number(value),
                        level=phrase(f"level.{level}", lang), side=side, danger=danger))
        safe, bad = spec.get("safe"), spec.get("danger")
        if level != "safe" and isinstance(safe, (int, float)) and isinstance(bad, (int, float)) and bad != safe:
            ratio = min(max((value - safe) / (bad - safe), 0.0), 1.0)
            risks.append(_t(lang, "risk_close", meaning=_meaning(name, lang), level=phrase(f"level.{level}", lang),
                            value=number(value), side=side, danger=danger, safe=f"{safe:g}", ratio=f"{ratio:.0%}"))
    return (_t(lang, "base_guard", items=_join(lang, items)) if items else None), risks


def _detectable(ctx: PlanContext, lang: str) -> Optional[str]:
    """How large a change of the key metric the base's own interval lets us see."""
    from minimind.verdict import metric_value, value_interval

    if not ctx.base_eval:
        return None
    metric = criteria_for(ctx.hypothesis, ctx.expect)[0][0].metric
    value, ci = metric_value(ctx.base_eval, metric), value_interval(ctx.base_eval, metric)
    floor = (getattr(ctx, "noise_floor", None) or {}).get(metric)  # an analysis's context has none
    if value is not None and floor:
        # The measured seed spread: what one run of this experiment against the base can tell apart.
        from minimind.noise import detectable

        n_base = getattr(ctx, "base_replicates", 1)
        half = detectable(floor["sd"], 1, n_base, floor["df"])
        return _t(lang, "detectable_floor", m=metric, v=number(value), sd=f"{floor['sd']:.3g}",
                  exps=", ".join(floor["experiments"]), n=n_base, half=f"{half:.3g}",
                  half3=f"{detectable(floor['sd'], 3, max(n_base, 3), floor['df']):.3g}")
    if value is None or ci is None:
        return None
    return _t(lang, "detectable", m=metric, v=number(value), conf=f"{ci['confidence']:.0%}", lo=number(ci["low"]),
              hi=number(ci["high"]), n=ci["n"], half=f"{(ci['high'] - ci['low']) / 2:.3g}")


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
        lang = ctx.lang
        changes: dict[str, Any] = {}
        for key, value in pairs_in_text(f"{ctx.goal}\n{ctx.hypothesis}"):
            full = _schema_key(key, ctx.config_schema)
            if full is not None:
                changes[full] = value
        rationale = {}
        for key in changes:
            spec = ctx.config_schema[key]
            rationale[key] = _t(lang, "named", help=spec.get("help", "").rstrip("."))
        model = ctx.base_config.get("model", {})
        train = ctx.base_config.get("train", {})
        base_text = _t(lang, "base_exp", v=ctx.base) if ctx.base else _t(lang, "base_default")
        steps = _t(lang, "steps", n=train.get("max_steps")) if train.get("max_steps") else ""
        lines = [_t(lang, "start", base=base_text, preset=model.get("preset"), dim=model.get("dim"),
                    layers=model.get("n_layers"), batch=train.get("batch_size"), lr=train.get("learning_rate"),
                    steps=steps)]
        human = [(_schema_key(k, ctx.config_schema) or k, v) for k, v in ctx.sets]
        all_changes = [(k, v) for k, v in changes.items() if k not in dict(human)] + human
        # a value equal to the base's is not a change
        all_changes = [(k, v) for k, v in all_changes if _flat_get(ctx.base_config, k) != v]
        if all_changes:
            listed = ", ".join(f"`{k}` {_flat_get(ctx.base_config, k)!r} → {v!r}" for k, v in all_changes)
            lines.append(_t(lang, "changes", listed=listed))
        else:
            lines.append(_t(lang, "no_change"))
        if ctx.model_diff.strip():
            changed = sum(1 for line in ctx.model_diff.splitlines() if line.startswith(("+", "-"))
                          and not line.startswith(("+++", "---")))
            against = _t(lang, "against_base", v=ctx.base.replace(".", "_")) if ctx.base else _t(lang, "against_head")
            lines.append(_t(lang, "diff", against=against, n=changed))
        if ctx.base_eval:
            inf, val = ctx.base_eval.get("inference_loss"), ctx.base_eval.get("val_loss")
            if isinstance(inf, (int, float)) and isinstance(val, (int, float)):
                lines.append(_t(lang, "to_beat", val=number(val), inf=number(inf)))
        guard_line, close = _base_guardrails(ctx.base_eval, ctx.guardrails, lang)
        if guard_line:
            lines.append(guard_line)
        preset = _flat_get(ctx.base_config, "model.preset")
        for key, value in all_changes:
            if key.endswith("preset"):
                preset = value
        if preset in ctx.memory_presets:
            lines.append(_memory_query_sentence(ctx.checks, lang))
        lines.append(_guardrail_sentence(ctx.guardrails, lang))
        dangers = _dangers(ctx.guardrails, lang)
        table = group("offline_risk", lang)  # what each setting's change risks, by the setting's name
        risks = [f"`{key}`: {table[key.split('.')[-1]].format(**dangers)}" for key, _ in all_changes
                 if key.split(".")[-1] in table] + close
        if not risks:
            risks = [_t(lang, "risk_default")]
        expected = (ctx.expect or _t(lang, "expected_hyp", h=ctx.hypothesis)).strip()
        detectable = _detectable(ctx, lang)
        if detectable:
            expected = f"{expected}{'' if expected.endswith(('.', '。')) else phrase('sep.stop', lang)} {detectable}"
        return Plan(thinking="\n\n".join(lines), changes=changes, rationale=rationale, expected=expected,
                    risks=risks, backend=self.name)

    def analyse(self, ctx: AnalysisContext) -> Analysis:
        lang = ctx.lang
        m, ev = ctx.metrics_summary, ctx.eval
        training = _t(lang, "training", steps=m.get("steps", 0), dur=m.get("duration", "—"),
                      first=number(m.get("first_loss")), last=number(m.get("last_loss")), low=number(m.get("min_loss")),
                      smooth=number(m.get("smoothed_loss")), tps=number(m.get("tokens_per_s")))
        if ctx.state == "guardrail_stopped":
            training += _t(lang, "stopped", reason=ctx.stop_reason)
        inference = _t(lang, "inference", val=number(ev.get("val_loss")), inf=number(ev.get("inference_loss")),
                       ratio=number(ev.get("train_inference_ratio")), rep=_pct(ev.get("repetition_rate")),
                       d2=number(ev.get("distinct_2")))
        recall = ev.get("recall") or {}
        if recall:
            parts = [_t(lang, "recall_item", split=split, p=number(r.get("p_at_1")), n=r.get("n"))
                     for split, r in recall.items()]
            inference += _t(lang, "recall", parts=_join(lang, parts))
        deep = []
        better = [r for r in ctx.comparison if r.get("mark") == "✅"]
        worse = [r for r in ctx.comparison if r.get("mark") == "❌"]
        noise = [r for r in ctx.comparison if r.get("mark") == "≈"]
        if ctx.base_eval is None:
            deep.append(_t(lang, "no_base"))
        else:
            if better:
                deep.append(_t(lang, "better", items=_join(lang, [_moved(r) for r in better])))
            if worse:
                deep.append(_t(lang, "worse", items=_join(lang, [_moved(r) for r in worse])))
            if noise:
                deep.append(_t(lang, "noise", items=_join(lang, [r["metric"] for r in noise])))
            if not better and not worse and not noise:
                deep.append(_t(lang, "no_items"))
        control = (ctx.intervals or {}).get("held_out_control")
        if control and control.get("base") is not None:
            deep.append(_t(lang, "control", text=control["text"]))
        held, mem = recall.get("held_out", {}), recall.get("mem_only", {})
        preset = (ctx.model_config or {}).get("preset")
        if preset in ctx.memory_presets and held.get("p_at_1") is not None and mem.get("p_at_1") is not None:
            gap = mem["p_at_1"] - held["p_at_1"]
            deep.append(_t(lang, "gap", mem=number(mem["p_at_1"]), held=number(held["p_at_1"]), gap=f"{gap:+.3f}"))
        reading = (ctx.intervals or {}).get("bank_reading")
        if reading:  # only memory presets have retrieval diagnostics
            deep.append(_t(lang, "bank", text=reading["text"]))
        degenerate = self._degenerate(ctx)
        if degenerate:
            deep.append(_t(lang, "degenerate", items="; ".join(degenerate)))
        history = [h for h in ctx.guardrail_history if h.get("to") in ("watch", "danger")]
        if history:
            deep.append(_t(lang, "history", items=_join(lang, [
                _t(lang, "history_item", name=h["name"], frm=h.get("from") or _t(lang, "unset"), to=h["to"],
                   step=h.get("step"), value=number(h.get("value"))) for h in history[:6]])))
        dangers = {n: g for n, g in (ev.get("guardrails") or {}).items() if g.get("level") == "danger"}
        if dangers:
            deep.append(_t(lang, "dangers", items=_join(lang, [
                f"{n} = {number(g.get('value'))}" + (f" ({' '.join(_side(n, ctx.guardrails[n], lang))})" if n in ctx.guardrails else "")
                for n, g in dangers.items()])))
        else:
            deep.append(_t(lang, "no_danger"))
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
                out.append(_t(ctx.lang, "degenerate_item", i=i, text=_first_line(str(sample.get("generated", "")), 60),
                              rep=f"{rep:.3g}", limit=f"{limit:g}"))
        return out

    @staticmethod
    def _conclusion(ctx: AnalysisContext, dangers: dict) -> str:
        lang = ctx.lang
        rows = {r["metric"]: r for r in ctx.comparison}
        # The metrics the verdict was decided on come first (an SFT run's chat QA), then the
        # language-model losses: a conclusion citing only a loss the change was not about
        # reads as if the verdict had been decided on it.
        decided = [c.metric for c in criteria_for(ctx.hypothesis, ctx.expect)[0]]
        names = list(dict.fromkeys([*decided, "inference_loss", "val_loss"]))
        moved = [_moved(rows[name]) for name in names if name in rows and rows[name].get("base") is not None]
        parts = [_t(lang, "against", base=ctx.base, items=_join(lang, moved)) if moved and ctx.base else
                 _t(lang, "reference")]
        parts.append(_t(lang, f"m_{ctx.verdict}"))
        if dangers:
            parts.append(_t(lang, "resolve", names=", ".join(sorted(dangers))))
        return phrase("sep.sentence", lang).join(parts)

    @staticmethod
    def _next_steps(ctx: AnalysisContext, dangers: dict) -> list[str]:
        """Steps that fit the run: its causes (AnalysisContext.causes), preset, stage and verdict.
        Nothing is rolled back that the run did not change, and a danger the base already had
        is not blamed on this run."""
        lang = ctx.lang
        causes = {c.get("kind"): c for c in ctx.causes}
        memory = (ctx.model_config or {}).get("preset") in ctx.memory_presets
        changed = bool(ctx.config_changes or ctx.model_diff.strip())
        steps = []
        if "forced_check" in causes:
            steps.append(_t(lang, "s_forced", checks=", ".join(causes["forced_check"]["names"])))
        moved = causes.get("guardrail_moved")
        if moved:
            names = ", ".join(moved["names"])
            if ctx.model_diff.strip():
                steps.append(_t(lang, "s_rollback_query" if memory else "s_rollback", names=names))
            elif ctx.config_changes:
                steps.append(_t(lang, "s_step_back", names=names,
                                keys=", ".join(k for k, _, _ in ctx.config_changes[:4])))
        if "memory_entropy" in dangers and memory:
            steps.append(_t(lang, "s_diversity"))
        under = causes.get("under_trained")
        if under:
            steps.append(_t(lang, "s_under", loss=number(under.get("train_loss")), uniform=number(under.get("uniform_loss"))))
        reading = (ctx.intervals or {}).get("bank_reading")
        if reading and not reading["above_chance"]:
            steps.append(_t(lang, "s_bank"))
        control = (ctx.intervals or {}).get("held_out_control") or {}
        if control.get("suspicious"):
            steps.append(_t(lang, "s_eval"))
        if under:
            pass  # an under-trained run judges no change: training longer comes first
        elif ctx.verdict == "supported":
            steps.append(_t(lang, "s_seed"))
        elif ctx.verdict == "refuted":
            steps.append(_t(lang, "s_revert" if changed and ctx.base else "s_seed_refuted"))
        elif ctx.base is None or ctx.base_eval is None:
            steps.append(_t(lang, "s_first"))
        else:
            wide = [r for r in ctx.comparison if r.get("mark") == "≈" and r.get("ci")]
            if wide:
                r = min(wide, key=lambda r: r["ci"]["n"])
                steps.append(_t(lang, "s_more", m=r["metric"], n=r["ci"]["n"]))
            else:
                steps.append(_t(lang, "s_rebase"))
        if ctx.state == "guardrail_stopped":
            steps.append(_t(lang, "s_stop"))
        return steps

    def draft_commit(self, ctx: CommitContext) -> CommitDraft:
        """Every line from the run: the config changes with the plan's reasons, the model
        diff's changed functions, the computed verdict."""
        lang = ctx.lang
        changes = ", ".join(f"{k}: {_short(a)} → {_short(b)}" for k, a, b in ctx.config_changes[:6]) or _t(lang, "no_config")
        title = _t(lang, "title", v=ctx.version, goal=_first_line(ctx.goal, 60))  # code appends the verdict
        improvements = [_t(lang, "tested", h=_first_line(ctx.hypothesis, 160)), _t(lang, "config", changes=changes)]
        reasons = (ctx.plan or {}).get("rationale") or {}
        for change in (ctx.plan or {}).get("changes") or []:  # plan.json rows: {key, base, new, why}
            if isinstance(change, dict) and change.get("key") and change.get("why"):
                reasons.setdefault(change["key"], change["why"])
        why_model = _first_line(str((ctx.plan or {}).get("thinking") or ctx.hypothesis), 160)
        symbols = ctx.changed_symbols
        core: dict[str, list[str]] = {}
        for path in ctx.files:
            name = path.rsplit("/", 1)[-1]
            if path.startswith("experiment/"):
                core[path] = [_t(lang, "c_record", verdict=ctx.verdict, reason=_first_line(ctx.verdict_reason, 160))]
            elif name == "run.sh":
                core[path] = [_t(lang, "c_script")]
            elif name == "config.yaml":
                core[path] = [_t(lang, "c_config", k=k, a=_short(a), b=_short(b),
                                 why=_first_line(str(reasons.get(k) or _t(lang, "c_human")), 120))
                              for k, a, b in ctx.config_changes] or [_t(lang, "c_config_none")]
            elif path.startswith("models/model_"):
                core[path] = [_t(lang, "c_snapshot")]
            elif path == "models/model.py":
                lines = _diff_lines(ctx.model_diff)
                if ctx.code_change:  # a code experiment: the reasons given for its hunks say why
                    why_model = _first_line("; ".join(dict.fromkeys(
                        r for h in ctx.code_change.get("hunks", []) for r in h.get("reasons", []))) or why_model, 240)
                where = _join(lang, symbols) if symbols else _t(lang, "c_toplevel")
                core[path] = ([_t(lang, "c_model", n=lines, where=where, why=why_model)] if ctx.model_changed and lines
                              else [_t(lang, "c_model_same")])
            elif name == "eval.json":
                core[path] = [_t(lang, "c_eval", items=_first_line("; ".join(ctx.result_lines[1:4]), 200))]
            elif name == "plan.json":
                core[path] = [_t(lang, "c_plan")]
            elif name == "model.diff":
                core[path] = [_t(lang, "c_diff")]
            elif name == "model.patch":
                core[path] = [_t(lang, "c_patch")]
            elif name == "code_change.json":
                core[path] = [_t(lang, "c_code_change", summary=_first_line(str((ctx.code_change or {}).get("summary")
                                                                            or ""), 120))]
            elif name.endswith(".png"):
                core[path] = [_t(lang, "c_plot")]
        return CommitDraft(title=title, improvements=improvements, core_changes=core, results=list(ctx.result_lines),
                           next_steps=list(ctx.next_steps), backend=self.name)


def _diff_lines(diff: str) -> int:
    return sum(1 for line in diff.splitlines() if line.startswith(("+", "-")) and not line.startswith(("+++", "---")))


def _moved(row: dict) -> str:
    ci = row.get("ci")
    shown = f" (Δ {ci['confidence']:.0%} CI {interval((ci['low'], ci['high']), '+.3g')})" if ci else ""
    return f"{row['metric']} {number(row.get('base'))} → {number(row.get('new'))}{shown}"


def _pct(value: Any) -> str:
    return "—" if not isinstance(value, (int, float)) else f"{100 * value:.1f}%"


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "..."


def _first_line(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
