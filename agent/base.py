"""The agent interface: what a backend is given and what it may return.

A backend (offline or claude) implements `plan`, `analyse` and `draft_commit`. Everything
it returns is data: text for the record's prose sections, and config changes that the
caller validates against the schema before they reach any file or shell. Numbers, the
verdict, thresholds and paths are decided by code, never by the backend.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol


def code_owned(default_factory=list, help: str = ""):
    """A result field that code fills (the model never writes it): left out of the tool schema."""
    return field(default_factory=default_factory, metadata={"code": True, "help": help})


def model_optional(help: str = ""):
    """A result field the model may write or leave out (null): a tool property that is not required."""
    return field(default=None, metadata={"optional": True, "help": help})


def model_fields(cls: type) -> list[str]:
    """The fields of a result dataclass that the model writes (the tool's properties)."""
    return [f.name for f in dataclasses.fields(cls) if f.name != "backend" and not f.metadata.get("code")]


def required_fields(cls: type) -> list[str]:
    """The model-written fields the model must write (the tool's required properties)."""
    return [f.name for f in dataclasses.fields(cls) if f.name in model_fields(cls) and not f.metadata.get("optional")]


@dataclass(kw_only=True)
class PlanContext:
    version: str
    base: Optional[str]
    goal: str
    hypothesis: str
    expect: Optional[str]
    sets: list[tuple[str, Any]]           # the human's --set pairs, already parsed
    base_config: dict[str, Any]           # resolved config the new one starts from
    base_record_summary: str              # base record's goal/hypothesis/conclusion, or ""
    base_eval: Optional[dict[str, Any]]   # base eval.json, if any
    model_diff: str                       # diff of models/model.py against the base snapshot
    config_schema: dict[str, dict]        # dotted key -> {type, help, min, max, choices, default}
    guardrails: dict[str, dict]           # name -> {safe, danger, action}
    lessons: str                          # the lab's architecture lessons
    # the presets and aliases whose blocks hold a memory bank, asked of the model module
    # (models/registry.py memory_presets): the agent layer cannot import the model itself
    memory_presets: tuple[str, ...]
    lang: str = "en"
    # preflight check results on this experiment's code: [{id, lesson, source, status, detail}]
    checks: list[dict[str, Any]] = field(default_factory=list)
    notebook: str = ""                    # the lab notebook: compact trace of every experiment, reviewer notes
    code_change: Optional[dict[str, Any]] = None  # the code change a proposal (next.json) declared for this experiment
    # The lab's measured run-to-run noise: metric -> {sd, df, experiments} (minimind/noise.py); {} when unmeasured.
    noise_floor: dict[str, dict[str, Any]] = field(default_factory=dict)
    base_replicates: int = 1                  # runs of the base (its replicates)


# The prose fields of a plan: checked like an analysis's, with no verdict to claim (agent/prose.py).
PLAN_PROSE = ("thinking", "expected", "risks")


@dataclass(kw_only=True)
class Plan:
    thinking: str                         # the record's "AI thinking process"
    changes: dict[str, Any]               # dotted config key -> value (validated by the caller)
    rationale: dict[str, str]             # dotted key -> why
    expected: str                         # expected results in the agent's words
    risks: list[str]
    backend: str
    notes: list[str] = code_owned(help="what code changed in the answer (a key the human set, dropped)")
    replaced: list[str] = code_owned(help="prose fields replaced because they claimed a verdict or quoted a number "
                                          "not in the data, with the reasons (never the replaced text)")
    # the code change the plan declares (agent/codeplan.py), implemented by the claude backend's implement step
    code_change: Optional[dict[str, Any]] = model_optional(help="the code change the plan declares (agent/codeplan.py)")


@dataclass(kw_only=True)
class AnalysisContext:
    version: str
    base: Optional[str]
    goal: str
    hypothesis: str
    expect: Optional[str]
    state: str                            # finished / guardrail_stopped / ...
    stop_reason: Optional[str]
    config_changes: list[tuple[str, Any, Any]]   # (key, base value, new value)
    metrics_summary: dict[str, Any]       # steps, first/last/min loss, tokens/s, duration
    eval: dict[str, Any]                  # this run's eval.json
    base_eval: Optional[dict[str, Any]]
    comparison: list[dict[str, Any]]      # rows {metric, base, new, delta, better}
    verdict: str                          # supported / refuted / inconclusive (computed)
    verdict_reason: str                   # the rule and numbers that decided it
    guardrails: dict[str, dict]           # the lab's rules: name -> {safe, danger, action}
    memory_presets: tuple[str, ...]       # as PlanContext's, of the module that built this run
    lang: str = "en"
    # What the analyst sees of the experiment beyond the numbers (lifecycle/running/analyse.py).
    plan: dict[str, Any] = field(default_factory=dict)          # the plan's thinking, expected, risks, changes
    model_diff: str = ""                                        # models/model.py hunks, bounded
    # A code experiment's change (runs/V/code_change.json, lifecycle/document/record.py code_change_brief):
    # its summary, each hunk's line and reasons, the human's rejection notes, the approval.
    code_change: Optional[dict[str, Any]] = None
    curves: dict[str, list] = field(default_factory=dict)       # name -> [[step, value], ...], downsampled
    guardrail_history: list[dict] = field(default_factory=list)  # [{step, name, value, level}] level changes
    samples: list[dict] = field(default_factory=list)           # prompt, reference, generated, repetition
    intervals: dict[str, Any] = field(default_factory=dict)     # held_out control, retrieval
    fixed_settings: dict[str, Any] = field(default_factory=dict)  # data/eval/guardrails/launch: not the agent's
    model_config: dict[str, Any] = field(default_factory=dict)    # the run's model section (preset, sizes)
    notebook: str = ""                    # the lab notebook: compact trace of every experiment, reviewer notes
    lessons: str = ""                     # the lab's lessons (experiment/LESSONS.md)
    # What a proposed next experiment is validated against (agent/tools.py validate_analysis):
    config_schema: dict[str, dict] = field(default_factory=dict)  # dotted key -> {type, min, max, choices, ...}
    versions: list[str] = field(default_factory=list)             # the lab's experiments (a proposal's base)
    # What the data supports as the cause of the result (minimind/causes.py), most direct first:
    # the only causes a lesson or a next step may name.
    causes: list[dict[str, Any]] = field(default_factory=list)
    stage: str = "pretrain"               # pretrain / sft: next steps fit the stage


# The prose fields of an analysis: checked against the verdict and the data (agent/prose.py).
ANALYSIS_PROSE = ("training_results", "inference_evaluation", "deep_analysis", "conclusion", "next_steps")


@dataclass(kw_only=True)
class Analysis:
    """The record's prose sections. Further fields may be added (each one the model
    writes becomes a property of the write_analysis tool; `code_owned` ones do not)."""

    training_results: str
    inference_evaluation: str
    deep_analysis: str
    conclusion: str
    next_steps: list[str]
    backend: str
    # Proposals the model may make (validated in agent/tools.py; when absent or refused the
    # lifecycle's rules propose: lifecycle/knowledge/lessons.py, lifecycle/knowledge/proposal.py).
    lesson: Optional[dict[str, Any]] = model_optional(
        help="only when code found a cause (AnalysisContext.causes), naming it: {text, evidence: [...]}")
    next_experiment: Optional[dict[str, Any]] = model_optional(
        help="{goal, hypothesis, sets: {dotted key: value}, expect, why, base}")
    notes: list[str] = code_owned(help="fields replaced because they contradicted the numbers, with the reasons")


def lesson_due(causes: Optional[list[dict[str, Any]]]) -> bool:
    """A lesson is proposed only when the data supports a cause (minimind/causes.py): a
    refuted verdict or a danger the base already had teaches nothing certain."""
    return bool(causes)


def cause_words(cause: dict[str, Any]) -> list[str]:
    """Words of which a lesson naming `cause` contains one (its check ids, guardrail names, or
    under-training in either language)."""
    if cause.get("kind") == "under_trained":
        return ["under-train", "undertrain", "under train", "训练不足", "欠训练"]
    names = [str(n) for n in cause.get("names") or []]
    return names + [n.replace("_", " ") for n in names if "_" in n]  # "repetition rate" names repetition_rate too


@dataclass(kw_only=True)
class CommitContext:
    version: str
    goal: str
    hypothesis: str
    verdict: str
    verdict_reason: str
    files: list[str]                      # files the commit will contain (decided by code)
    config_changes: list[tuple[str, Any, Any]]
    result_lines: list[str]               # "✅ ..." / "❌ ..." computed from the numbers
    next_steps: list[str]
    model_changed: bool
    lang: str = "en"
    model_diff: str = ""                  # models/model.py hunks, bounded
    plan: dict[str, Any] = field(default_factory=dict)   # thinking, expected, risks, changes with their why
    facts: dict[str, Any] = field(default_factory=dict)  # the numbers prose may quote (comparison, eval)
    changed_symbols: list[str] = field(default_factory=list)  # functions/classes the model diff touches
    code_change: Optional[dict[str, Any]] = None  # a code experiment's change with each hunk's reasons (as above)


COMMIT_PROSE = ("title", "improvements", "core_changes", "next_steps")


@dataclass(kw_only=True)
class CommitDraft:
    title: str                            # the summary; code appends the computed verdict
    improvements: list[str]
    core_changes: dict[str, list[str]]    # file -> bullet lines (files outside ctx.files are dropped)
    next_steps: list[str]
    backend: str
    results: list[str] = code_owned(help="the computed result lines (never the model's)")
    notes: list[str] = code_owned(help="fields replaced because they contradicted the numbers, with the reasons")


class AgentBackend(Protocol):
    name: str

    def plan(self, ctx: PlanContext) -> Plan: ...

    def analyse(self, ctx: AnalysisContext) -> Analysis: ...

    def draft_commit(self, ctx: CommitContext) -> CommitDraft: ...


class AgentError(Exception):
    """A backend could not produce a valid answer (after retries / one repair round)."""


def lessons_text(guardrails: dict[str, dict], lessons: list[str]) -> str:
    """The lab's lessons (experiment/LESSONS.md, lifecycle/knowledge/lessons.py), with the guardrail
    thresholds of this lab's settings: what happened in the lab is its lessons file's, never this module's."""
    from minimind.guardrails import MEANINGS, danger_text, rule_from

    signs = ", ".join(f"{MEANINGS.get(name, name)} {danger_text(name, rule_from(spec))}"
                      for name, spec in guardrails.items())
    return "".join(f"- {line}\n" for line in lessons) + f"- This lab's guardrail thresholds (minimind.yaml): {signs}.\n"
