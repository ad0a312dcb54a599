"""Tool definitions for the claude backend and the validators for what comes back.

One tool per step (`propose_plan`, `write_analysis`, `draft_commit`). Each tool's JSON
schema is generated from the dataclass that holds the validated result (agent/base.py
`Plan`, `Analysis`, `CommitDraft`, minus `backend`), and the `changes` object of a plan
is generated from the experiment's config schema, so the model is shown exactly what
the validator accepts. The validators re-check everything (a schema is a request, not a
guarantee) and raise `ToolInputError` listing every problem, which becomes the repair
message of the one repair round.

What the model may set: `model.*` and `train.*` keys only (minimind/config.py `AGENT_SECTIONS`); never
data paths, guardrail thresholds, evaluation, launch or SwanLab settings, and no string
value outside a small safe alphabet. Text fields are plain data: stripped, control characters removed,
length-limited; single-line fields (titles, bullets) have newlines folded.

The analysis may also propose the lab's lesson and the next experiment (`lesson`,
`next_experiment`, optional): their keys, values, `expect`, base version and numbers are
checked here; a refused one is repaired once, then dropped with a note, and the
lifecycle's rules propose instead (lifecycle/knowledge/lessons.py, lifecycle/knowledge/proposal.py).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, get_args, get_origin, get_type_hints

from agent import prose
from agent.base import (ANALYSIS_PROSE, COMMIT_PROSE, PLAN_PROSE, Analysis, AnalysisContext, CommitContext, CommitDraft, Plan,
                        PlanContext, cause_words, lesson_due, model_fields, required_fields)
from minimind.config import AGENT_SECTIONS, FIXED_SECTIONS
from minimind.errors import UsageError

MAX_TEXT = 8000          # characters of one prose field
MAX_LINE = 500           # characters of one bullet
MAX_TITLE = 100          # characters of a commit title
MAX_ITEMS = 12           # bullets in one list
MAX_STRING_VALUE = 64    # characters of a string config value
MAX_ABS_NUMBER = 1e15    # numbers beyond this are refused even where the schema sets no range

# A string config value (a preset name, a policy) needs nothing beyond these characters;
# everything a shell, YAML or a path would read specially is outside it.
_SAFE_STRING = re.compile(r"[A-Za-z0-9_.:+=@%, -]*")
_SHELL_CHARS = set("$`;|&<>(){}\\'\"*?~!#[]^")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

TOOL_NAMES = {"plan": "propose_plan", "analyse": "write_analysis", "draft_commit": "draft_commit"}

_FIELD_HELP = {
    "thinking": "Your reasoning for this experiment: what the base showed, what the change tests, why these values.",
    "changes": "Config changes beyond the base config: dotted key -> value. Only keys listed here, or model.<name> of a "
               "new setting your code_change declares; omit keys you keep.",
    "code_change": "Only when the hypothesis needs a change to models/model.py: what it does (summary), the definitions it "
                   "changes (touches), each new ModelConfig setting (name, type, default that keeps today's behaviour, "
                   "meaning), and changes_default. Omit it (or null) for a config-only experiment.",
    "rationale": "Why each changed key has its new value: dotted key -> one or two sentences.",
    "expected": "What you expect the results to show if the hypothesis holds, in words (no invented numbers).",
    "risks": "What could go wrong or confound the result, one per item.",
    "training_results": "What the training metrics show (loss trajectory, speed, guardrails).",
    "inference_evaluation": "What the evaluation shows (inference loss, repetition, recall, samples).",
    "deep_analysis": "Why the results came out this way; compare with the base.",
    "conclusion": "The conclusion, consistent with the computed verdict given to you.",
    "next_steps": "Concrete next experiments or checks, one per item.",
    "title": "One-line commit title (no trailing period).",
    "improvements": "Main improvements of this experiment, one per item.",
    "core_changes": "Per file of the commit: bullet lines describing its change.",
    "lesson": "Only when the task names a cause the data supports (else null): the lesson this experiment "
              "teaches the lab, naming that cause, and its evidence, quoting only numbers given to you.",
    "next_experiment": "The next experiment you propose (or null to leave it to minimind's rules): goal, hypothesis, "
                       "the config changes against this experiment (dotted key -> value, only the keys listed), an "
                       "--expect criterion such as 'inference_loss < base', why, and optionally the base version.",
}


class ToolInputError(ValueError):
    """The model's tool input does not validate; `problems` lists every reason."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


# --- schemas ---------------------------------------------------------------------------

def allowed_config_keys(config_schema: dict[str, dict]) -> list[str]:
    """The dotted keys the model may change: the schema's keys minus forbidden sections."""
    return [key for key in config_schema if not _forbidden_reason(key)]


def _forbidden_reason(key: str) -> str | None:
    section = key.split(".", 1)[0] if "." in key else ""
    # the sections are minimind/config.py's (AGENT_SECTIONS an allowlist); keys are dotted `section.name`
    if section in FIXED_SECTIONS:
        return f"{key}: {section}.* settings may not be changed by the agent"
    if section not in AGENT_SECTIONS:
        return f"{key}: only {' and '.join(s + '.*' for s in AGENT_SECTIONS)} settings may be changed by the agent"
    return None


def _value_schema(spec: dict) -> dict[str, Any]:
    """JSON schema of one config value from its `describe()` entry."""
    out: dict[str, Any] = {}
    choices = spec.get("choices")
    tp = _base_type(spec.get("type", ""))
    if choices:
        out["enum"] = list(choices)
    elif tp == "int":
        out["type"] = "integer"
    elif tp == "float":
        out["type"] = "number"
    elif tp == "bool":
        out["type"] = "boolean"
    elif tp == "str":
        out["type"] = "string"
        out["maxLength"] = MAX_STRING_VALUE
    else:
        out["type"] = ["string", "number", "boolean"]
    if spec.get("min") is not None:
        out["minimum"] = spec["min"]
    if spec.get("max") is not None:
        out["maximum"] = spec["max"]
    if spec.get("help"):
        out["description"] = str(spec["help"])
    return out


def _base_type(type_name: str) -> str:
    """'int' / 'float' / 'bool' / 'str' / 'choice' / '' (anything else) from describe()'s type."""
    name = str(type_name).strip()
    if name in ("int", "float", "bool", "str"):
        return name
    if name.startswith("'") or name.startswith('"'):
        return "choice"
    return ""


def _field_schema(tp: Any, name: str) -> dict[str, Any]:
    """JSON schema of one result dataclass field from its annotation."""
    origin = get_origin(tp)
    if tp is str:
        limit = MAX_TITLE if name == "title" else MAX_TEXT
        return {"type": "string", "maxLength": limit}
    if origin is list and get_args(tp) == (str,):
        return {"type": "array", "items": {"type": "string", "maxLength": MAX_LINE}, "maxItems": MAX_ITEMS}
    if origin is dict:
        _, value_tp = get_args(tp)
        return {"type": "object", "additionalProperties": _field_schema(value_tp, name)}
    raise TypeError(f"no JSON schema for {name}: {tp!r}")


def _tool(name: str, description: str, cls: type, overrides: dict[str, dict]) -> dict[str, Any]:
    hints = get_type_hints(cls)
    properties: dict[str, Any] = {}
    for fld in dataclasses.fields(cls):
        if fld.name not in model_fields(cls):
            continue  # set by the backend or by code, never by the model
        schema = overrides.get(fld.name) or _field_schema(hints[fld.name], fld.name)
        properties[fld.name] = {**schema, "description": _FIELD_HELP.get(fld.name, fld.name)}
    return {
        "name": name,
        "description": description,
        "input_schema": {"type": "object", "properties": properties,
                         "required": [f for f in required_fields(cls) if f in properties], "additionalProperties": False},
    }


def plan_tool(ctx: PlanContext) -> dict[str, Any]:
    keys = allowed_config_keys(ctx.config_schema)
    changes = {"type": "object", "additionalProperties": False,
               "properties": {k: _value_schema(ctx.config_schema[k]) for k in keys}}
    rationale = {"type": "object", "additionalProperties": False,
                 "properties": {k: {"type": "string", "maxLength": MAX_LINE} for k in keys}}
    from agent.codeplan import SCHEMA as code_change  # a change to models/model.py, implemented in a later step

    # model.<name> of a new setting that code_change declares (validated against that declaration)
    changes["patternProperties"] = {r"^model\.[a-z_][a-z0-9_]*$": {"type": ["boolean", "number", "string"]}}
    return _tool(TOOL_NAMES["plan"], "Propose the experiment plan: reasoning, config changes within the schema, "
                 "expected results and risks.", Plan, {"changes": changes, "rationale": rationale,
                                                       "code_change": code_change})


def analysis_tool(ctx: AnalysisContext) -> dict[str, Any]:
    keys = allowed_config_keys(ctx.config_schema)
    line = {"type": "string", "maxLength": MAX_LINE}
    lesson = {"type": ["object", "null"], "additionalProperties": False, "required": ["text", "evidence"],
              "properties": {"text": line, "evidence": {"type": "array", "items": line, "maxItems": MAX_ITEMS}}}
    sets = {"type": "object", "additionalProperties": False,
            "properties": {k: _value_schema(ctx.config_schema[k]) for k in keys}}
    nxt = {"type": ["object", "null"], "additionalProperties": False, "required": ["goal", "hypothesis", "sets", "why"],
           "properties": {"goal": line, "hypothesis": line, "sets": sets, "expect": line, "why": line,
                          "base": {"type": "string", "maxLength": 32}}}
    from agent.codeplan import SCHEMA as code_change  # the next experiment may need a change to models/model.py

    nxt["properties"]["code_change"] = code_change
    return _tool(TOOL_NAMES["analyse"], "Write the record's result sections: explain the computed numbers "
                 "and verdict, do not change them; propose a lesson and the next experiment.", Analysis,
                 {"lesson": lesson, "next_experiment": nxt})


def commit_tool(ctx: CommitContext) -> dict[str, Any]:
    bullets = {"type": "array", "items": {"type": "string", "maxLength": MAX_LINE}, "maxItems": MAX_ITEMS}
    core = {"type": "object", "additionalProperties": False, "properties": {f: bullets for f in ctx.files}}
    return _tool(TOOL_NAMES["draft_commit"], "Draft the commit message sections.", CommitDraft, {"core_changes": core})


# --- validation ------------------------------------------------------------------------

def _text(value: Any, where: str, problems: list[str], *, limit: int = MAX_TEXT,
          one_line: bool = False, required: bool = True) -> str:
    """Clean prose: a string, control characters removed, stripped, cut at `limit`."""
    if not isinstance(value, str):
        problems.append(f"{where}: expected a string, got {type(value).__name__}")
        return ""
    text = _CONTROL.sub("", value.replace("\r\n", "\n"))
    if one_line:
        text = " ".join(text.split())
    text = text.strip()
    if required and not text:
        problems.append(f"{where}: must not be empty")
    if len(text) > limit:
        text = text[: limit - 2].rstrip() + " …"
    return text


def _lines(value: Any, where: str, problems: list[str]) -> list[str]:
    if not isinstance(value, list):
        problems.append(f"{where}: expected a list of strings, got {type(value).__name__}")
        return []
    if len(value) > MAX_ITEMS:
        problems.append(f"{where}: at most {MAX_ITEMS} items, got {len(value)}")
    out = []
    for i, item in enumerate(value[:MAX_ITEMS]):
        line = _text(item, f"{where}[{i}]", problems, limit=MAX_LINE, one_line=True, required=False)
        if line:
            out.append(line)
    return out


def _check_keys(data: Any, cls: type, problems: list[str]) -> dict[str, Any]:
    """The tool input as a dict; missing and unknown top-level keys added to `problems`."""
    if not isinstance(data, dict):
        problems.append(f"the tool input must be an object, got {type(data).__name__}")
        return {}
    expected = model_fields(cls)
    for name in required_fields(cls):
        if name not in data:
            problems.append(f"{name}: missing")
    for name in sorted(set(data) - set(expected)):
        problems.append(f"{name}: unknown key (allowed: {', '.join(expected)})")
    return data


def check_config_value(key: str, value: Any, spec: dict) -> str | None:
    """Why `value` may not be set for `key` (None when it may): type, range, safe strings."""
    if value is None or isinstance(value, (dict, list)):
        return f"{key}: must be a single number, boolean or string, got {value!r}"
    choices = spec.get("choices")
    if choices:
        if not any(c == value and type(c) is type(value) for c in choices):  # True is not 1
            return f"{key}: must be one of {', '.join(map(str, choices))}; got {value!r}"
        return None
    tp = _base_type(spec.get("type", ""))
    if tp == "bool" and not isinstance(value, bool):
        return f"{key}: expected true or false, got {value!r}"
    if tp == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        return f"{key}: expected an integer, got {value!r}"
    if tp == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"{key}: expected a number, got {value!r}"
    if tp == "str" and not isinstance(value, str):
        return f"{key}: expected a string, got {value!r}"
    if isinstance(value, str):
        return _check_string(key, value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return f"{key}: must be finite, got {value!r}"
        lo, hi = spec.get("min"), spec.get("max")
        if lo is not None and value < lo:
            return f"{key}: must be >= {lo}, got {_short(value)}"
        if hi is not None and value > hi:
            return f"{key}: must be <= {hi}, got {_short(value)}"
        if abs(value) > MAX_ABS_NUMBER:
            return f"{key}: {_short(value)} is out of any sensible range"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:20] + f"...({len(text)} digits)"


def _check_string(key: str, value: str) -> str | None:
    if len(value) > MAX_STRING_VALUE:
        return f"{key}: string longer than {MAX_STRING_VALUE} characters"
    if "\n" in value or "\r" in value or "\x00" in value:
        return f"{key}: strings may not contain newlines or NUL"
    bad = sorted(set(value) & _SHELL_CHARS)
    if bad:
        return f"{key}: strings may not contain shell metacharacters ({' '.join(bad)})"
    if "/" in value or ".." in value:
        return f"{key}: path-like strings are not allowed"
    if not _SAFE_STRING.fullmatch(value):
        return f"{key}: only letters, digits, spaces and _ . : + = @ % , - are allowed"
    if value.startswith("-"):
        return f"{key}: strings may not start with '-'"
    return None


def _human_set(key: str, sets: list[tuple[str, Any]]) -> tuple[bool, Any]:
    """Whether the human's --set pairs name `key` (dotted or by its bare name), and the value."""
    for set_key, value in sets:
        if set_key == key or key.endswith("." + set_key):
            return True, value
    return False, None


def validate_plan(tool_input: Any, ctx: PlanContext, backend: str = "claude", final: bool = False) -> Plan:
    problems: list[str] = []
    dropped: list[str] = []
    data = _check_keys(tool_input, Plan, problems)
    code_change, new_settings = _code_change(data.get("code_change"), problems)
    changes: dict[str, Any] = {}
    raw_changes = data.get("changes", {})
    if not isinstance(raw_changes, dict):
        problems.append(f"changes: expected an object, got {type(raw_changes).__name__}")
        raw_changes = {}
    for key, value in raw_changes.items():
        key = str(key)
        reason = _forbidden_reason(key)
        if reason:
            problems.append(reason)
            continue
        if key not in ctx.config_schema and key in new_settings:
            if not _is_type(value, new_settings[key]):
                problems.append(f"{key}: expected a {new_settings[key]} (code_change.new_settings), got {value!r}")
            else:
                changes[key] = value
            continue
        if key not in ctx.config_schema:
            problems.append(f"{key}: unknown config key")
            continue
        reason = check_config_value(key, value, ctx.config_schema[key])
        if reason:
            problems.append(reason)
            continue
        was_set, human_value = _human_set(key, ctx.sets)
        if was_set:
            # The human's --set wins; a repeat or a different value is dropped, never a failure.
            dropped.append(f"{key}: the agent proposed {value!r}, but the human set it to {human_value!r} "
                           "with --set; the human's value is kept and the proposal dropped")
            continue
        changes[key] = value
    rationale: dict[str, str] = {}
    raw_rationale = data.get("rationale", {})
    if not isinstance(raw_rationale, dict):
        problems.append(f"rationale: expected an object, got {type(raw_rationale).__name__}")
        raw_rationale = {}
    for key, why in raw_rationale.items():
        if key in new_settings:
            rationale[str(key)] = _text(why, f"rationale.{key}", problems, limit=MAX_LINE, one_line=True)
            continue
        if key not in ctx.config_schema or _forbidden_reason(str(key)):
            problems.append(f"rationale.{key}: not a key the plan may change")
            continue
        if _human_set(str(key), ctx.sets)[0]:
            continue  # its change was dropped above
        rationale[str(key)] = _text(why, f"rationale.{key}", problems, limit=MAX_LINE, one_line=True)
    plan = Plan(
        thinking=_text(data.get("thinking", ""), "thinking", problems),
        changes=changes,
        rationale=rationale,
        expected=_text(data.get("expected", ""), "expected", problems),
        risks=_lines(data.get("risks", []), "risks", problems),
        backend=backend,
        notes=dropped,
        code_change=code_change,
    )
    # The plan's prose gets the analysis's checks and its one repair: no verdict before
    # training, and a metric's number only from the data the plan was given.
    facts, said = plan_facts(ctx)
    said += [("changes", float(v)) for v in changes.values()  # the plan may quote the values it proposes
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    plan = _enforce(plan, lambda: _offline_plan(ctx), PLAN_PROSE, None, facts, problems, final, ctx.lang, said)
    plan = dataclasses.replace(plan, notes=dropped, replaced=plan.notes[len(dropped):])
    if problems:
        raise ToolInputError(problems)
    return plan


def _offline_plan(ctx: PlanContext) -> Plan:
    from agent.offline import OfflineAgent

    return OfflineAgent().plan(ctx)


def _code_change(raw: Any, problems: list[str]) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """The plan's code_change, validated (agent/codeplan.py), and {model.<new setting>: type}."""
    if raw is None:
        return None, {}
    from agent.codeplan import CodeChange

    try:
        change = CodeChange.from_dict(raw)
    except UsageError as exc:
        problems.append(str(exc))
        return None, {}
    return change.to_dict(), {f"model.{s['name']}": s["type"] for s in change.new_settings}


def _is_type(value: Any, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str) and len(value) <= 200


def _enforce(result: Any, computed: Any, names: tuple[str, ...], verdict: str | None, data: Any,
             problems: list[str], final: bool, lang: str, extra_values: list[tuple[str, float]] | None = None) -> Any:
    """Prose that contradicts the verdict or the data: a problem (repair round), or on the
    final answer the field replaced by the computed text and a note saying so (the field and
    the reason, never the refused text). `verdict` None: a plan, before training."""
    found = prose.check_result(result, names, verdict, data, extra_values or [])
    if not found:
        return result
    if not final or problems:
        problems += prose.flat_problems(found)
        return result
    result, reasons = prose.replace_fields(result, computed(), found, lang)
    fields = sorted({re.split(r"[\[.]", k, maxsplit=1)[0] for k in found})
    note = prose.replacement_note(result.backend, fields, lang, plan=verdict is None)
    return dataclasses.replace(result, notes=list(result.notes) + [note] + reasons)


def plan_facts(ctx: PlanContext) -> tuple[dict[str, Any], list[tuple[str, float]]]:
    """The numbers a plan may quote: the data it was given (base eval without per-item data,
    configs, schema, guardrails, checks) and the numbers written in the prose it was given
    (the human's goal and hypothesis, the base record, the lessons, the notebook)."""
    data = dataclasses.asdict(ctx)
    for key in ("lessons", "notebook", "base_record_summary", "goal", "hypothesis", "expect", "model_diff"):
        data.pop(key, None)
    if isinstance(data.get("base_eval"), dict):
        data["base_eval"] = {k: v for k, v in data["base_eval"].items() if k not in prose.NOT_FACTS}
    texts = prose.text_values([ctx.goal, ctx.hypothesis, ctx.expect or "", ctx.base_record_summary, ctx.lessons,
                               ctx.notebook])
    return data, texts


def analysis_facts(ctx: AnalysisContext) -> dict[str, Any]:
    """The numbers an analysis may quote: everything it was given except per-item data."""
    data = dataclasses.asdict(ctx)
    for key in ("eval", "base_eval"):
        if isinstance(data.get(key), dict):
            data[key] = {k: v for k, v in data[key].items() if k not in prose.NOT_FACTS}
    data["config_changes"] = named_changes(ctx.config_changes)
    return data


def validate_analysis(tool_input: Any, ctx: AnalysisContext, backend: str = "claude", final: bool = False) -> Analysis:
    from agent.offline import OfflineAgent

    problems: list[str] = []
    data = _check_keys(tool_input, Analysis, problems)
    analysis = Analysis(
        training_results=_text(data.get("training_results", ""), "training_results", problems),
        inference_evaluation=_text(data.get("inference_evaluation", ""), "inference_evaluation", problems),
        deep_analysis=_text(data.get("deep_analysis", ""), "deep_analysis", problems),
        conclusion=_text(data.get("conclusion", ""), "conclusion", problems),
        next_steps=_lines(data.get("next_steps", []), "next_steps", problems),
        backend=backend,
    )
    facts = analysis_facts(ctx)
    proposals, refused = {}, []
    for name, check in (("lesson", _lesson), ("next_experiment", _next_experiment)):
        found: list[str] = []
        value = check(data.get(name), ctx, facts, found)
        if found:
            refused += found
        elif value is not None:
            proposals[name] = value
    if refused and not final:
        problems += refused  # the repair round, like prose
    analysis = _enforce(analysis, lambda: OfflineAgent().analyse(ctx), ANALYSIS_PROSE, ctx.verdict,
                        facts, problems, final, ctx.lang)
    if problems:
        raise ToolInputError(problems)
    analysis = dataclasses.replace(analysis, **proposals)
    if refused:  # the final answer: a refused proposal is dropped, minimind's rules propose instead
        analysis = dataclasses.replace(analysis, notes=list(analysis.notes) + [
            prose.proposal_note(backend, sorted({r.split(":", 1)[0].split(".", 1)[0] for r in refused}), ctx.lang)]
            + list(dict.fromkeys(prose.refusal_note(r) for r in refused)))
    return analysis


def _proposal_text(value: Any, where: str, facts: Any, verdict: str, found: list[str]) -> str:
    """One line of a proposal: clean, and no verdict or number that the data contradicts."""
    text = _text(value, where, found, limit=MAX_LINE, one_line=True)
    found += prose.flat_problems(prose.problems({where: text}, verdict, prose.known_values(facts))) if text else []
    return text


def _lesson(raw: Any, ctx: AnalysisContext, facts: Any, found: list[str]) -> dict[str, Any] | None:
    """The model's lesson: {text, evidence: [lines]}; refused on a run that teaches none by the rule
    (neither refuted nor in danger), and when its numbers are not in the data."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        found.append(f"lesson: expected an object or null, got {type(raw).__name__}")
        return None
    if not lesson_due(ctx.causes):
        found.append("lesson: the data supports no cause of this result (no forced failed check, no guardrail "
                     "moved into danger from the base, not under-trained); give null")
        return None
    for key in sorted(set(raw) - {"text", "evidence"}):
        found.append(f"lesson.{key}: unknown key (allowed: text, evidence)")
    text = _proposal_text(raw.get("text", ""), "lesson.text", facts, ctx.verdict, found)
    evidence_raw = raw.get("evidence", [])
    if isinstance(evidence_raw, str):
        evidence_raw = [evidence_raw]
    evidence = [_proposal_text(e, f"lesson.evidence[{i}]", facts, ctx.verdict, found)
                for i, e in enumerate(evidence_raw[:MAX_ITEMS] if isinstance(evidence_raw, list) else [])]
    if not isinstance(evidence_raw, list) or not [e for e in evidence if e]:
        found.append("lesson.evidence: at least one line of evidence (numbers from the data) is needed")
    elif not any(prose.has_number(e) for e in evidence):
        found.append("lesson.evidence: quotes no number; the evidence is the run's numbers")
    words = cause_words(ctx.causes[0])
    if text and not any(w.lower() in text.lower() for w in words):
        found.append(f"lesson.text: does not name the cause the data supports ({', '.join(words[:3])})")
    values = prose.known_values(facts)
    for i, line in enumerate(evidence):
        bad = prose.numbers_not_in_data(line, values)
        if bad:
            found.append(prose.Refusal(
                f"lesson.evidence[{i}]: {', '.join(bad)} is not a number of this run's data (within rounding)",
                f"lesson.evidence[{i}]: quotes a number that is not in this run's data"))
    return {"text": text, "evidence": [e for e in evidence if e]} if not found else None


def _next_experiment(raw: Any, ctx: AnalysisContext, facts: Any, found: list[str]) -> dict[str, Any] | None:
    """The model's next experiment: goal, hypothesis, sets (schema keys and values the human
    could type as --set), expect (criteria the verdict code reads), why, base (an experiment
    of the lab). Cross-field validation of the config it yields is the lifecycle's
    (lifecycle/knowledge/proposal.py), which falls back to its rules when that fails."""
    from minimind.verdict import parse_criteria
    from minimind.versions import parse as parse_version

    if raw is None:
        return None
    if not isinstance(raw, dict):
        found.append(f"next_experiment: expected an object or null, got {type(raw).__name__}")
        return None
    allowed = ("goal", "hypothesis", "sets", "expect", "why", "base", "code_change")
    for key in sorted(set(raw) - set(allowed)):
        found.append(f"next_experiment.{key}: unknown key (allowed: {', '.join(allowed)})")
    out: dict[str, Any] = {name: _proposal_text(raw.get(name, ""), f"next_experiment.{name}", facts, ctx.verdict, found)
                           for name in ("goal", "hypothesis", "why")}
    code_change, _ = _code_change(raw.get("code_change"), found)
    if code_change:
        out["code_change"] = code_change  # its new settings are set by the plan that implements it
    sets = raw.get("sets", {})
    if not isinstance(sets, dict):
        found.append(f"next_experiment.sets: expected an object (dotted key -> value), got {type(sets).__name__}")
        sets = {}
    clean: dict[str, Any] = {}
    for key, value in sets.items():
        key = str(key)
        reason = _forbidden_reason(key) or (None if key in ctx.config_schema else f"{key}: unknown config key")
        reason = reason or check_config_value(key, value, ctx.config_schema[key])
        if reason:
            found.append(f"next_experiment.sets.{reason}")
        else:
            clean[key] = value
    out["sets"] = clean
    expect = raw.get("expect")
    if expect is not None and expect != "":
        expect = _text(expect, "next_experiment.expect", found, limit=MAX_LINE, one_line=True)
        if expect and not parse_criteria(expect):
            found.append(f"next_experiment.expect: {expect!r} has no criterion minimind can check "
                         "(write e.g. 'inference_loss < base')")
        out["expect"] = expect
    base = raw.get("base")
    if base is not None and base != "":
        try:
            parse_version(str(base))
        except UsageError as exc:
            found.append(f"next_experiment.base: {str(exc).splitlines()[0]}")
        else:
            if str(base) != ctx.version and str(base) not in ctx.versions:
                found.append(f"next_experiment.base: {base} is not an experiment of this lab")
        out["base"] = str(base)
    return out if not found else None


def validate_commit(tool_input: Any, ctx: CommitContext, backend: str = "claude", final: bool = False) -> CommitDraft:
    from agent.offline import OfflineAgent

    problems: list[str] = []
    data = _check_keys(tool_input, CommitDraft, problems)
    core: dict[str, list[str]] = {}
    raw_core = data.get("core_changes", {})
    if not isinstance(raw_core, dict):
        problems.append(f"core_changes: expected an object, got {type(raw_core).__name__}")
        raw_core = {}
    for name, lines in raw_core.items():
        if name in ctx.files:  # files outside the commit are dropped, not repaired
            core[name] = _lines(lines, f"core_changes.{name}", problems)
    draft = CommitDraft(
        title=_text(data.get("title", ""), "title", problems, limit=MAX_TITLE, one_line=True),
        improvements=_lines(data.get("improvements", []), "improvements", problems),
        core_changes=core,
        next_steps=_lines(data.get("next_steps", []), "next_steps", problems),
        backend=backend,
        results=list(ctx.result_lines),
    )
    draft = _enforce(draft, lambda: OfflineAgent().draft_commit(ctx), COMMIT_PROSE, ctx.verdict,
                     commit_facts(ctx), problems, final, ctx.lang)
    if problems:
        raise ToolInputError(problems)
    return draft


def commit_facts(ctx: CommitContext) -> dict[str, Any]:
    data = dataclasses.asdict(ctx)
    data.pop("result_lines", None)
    data["config_changes"] = named_changes(ctx.config_changes)
    return data


def named_changes(changes: list) -> dict[str, Any]:
    """{setting: {base, new}}: a changed setting's values under its own name. As bare (key,
    base, new) rows their path named no setting, so "model.freeze_ratio 0.2 → 0.4" was checked
    against the train/inference ratio (the word "ratio" in the name) and refused."""
    return {str(k): {"base": a, "new": b} for k, a, b in changes}
