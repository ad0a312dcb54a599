"""Which agent backend answers: a registry, and the `auto` rule.

`auto` uses claude when an API key is configured, else offline. When claude fails under
`auto`, the offline backend takes over and the record says so; under an explicit
`--agent claude` the failure is an error and nothing is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from agent.base import AgentBackend, AgentError
from minimind.errors import MinimindError
from minimind.settings import AgentSettings


def _offline(settings: AgentSettings, log_dir: Path, prior_logs: list[Path]) -> AgentBackend:
    from agent.offline import OfflineAgent

    return OfflineAgent()


def _claude(settings: AgentSettings, log_dir: Path, prior_logs: list[Path]) -> AgentBackend:
    from agent.claude import ClaudeAgent

    return ClaudeAgent(settings, log_dir, prior_logs=prior_logs)


BACKENDS: dict[str, Callable[[AgentSettings, Path, list[Path]], AgentBackend]] = {"offline": _offline, "claude": _claude}


def resolve_name(requested: str) -> str:
    if requested == "auto":
        return "claude" if os.environ.get("ANTHROPIC_API_KEY") else "offline"
    return requested


def call(requested: str, settings: AgentSettings, log_dir: Path, step: str, ctx, prior_logs: list[Path] | None = None):
    """Run `step` (plan/analyse/draft_commit) on the chosen backend; returns (result, note).

    `note` is empty, or says that offline took over from a failed claude under auto.
    `prior_logs`: call logs of earlier failed attempts of this version (one budget).
    """
    name = resolve_name(requested)
    try:
        backend = BACKENDS[name](settings, log_dir, list(prior_logs or []))
        result = getattr(backend, step)(ctx)
        if name == "offline" and step in ("analyse", "draft_commit"):
            result = checked_offline(step, ctx, result)
    except AgentError as exc:
        if requested != "auto" or name == "offline":
            raise MinimindError(f"agent ({name}) {step} failed: {exc}") from None
        note = f"The claude backend failed ({str(exc).splitlines()[0][:160]}); the offline backend wrote this instead."
        return _offline_call(settings, log_dir, step, ctx, note), note
    if name == "offline":
        _log_offline(log_dir, step, result)
    return result, ""


def checked_offline(step: str, ctx, result):
    """The offline backend's prose under the same checks as the model's: a sentence that
    contradicts the verdict or the data is replaced by the computed verdict sentence."""
    import dataclasses

    from agent import prose, tools
    from agent.base import ANALYSIS_PROSE, COMMIT_PROSE

    names, facts = ((ANALYSIS_PROSE, tools.analysis_facts(ctx)) if step == "analyse"
                    else (COMMIT_PROSE, tools.commit_facts(ctx)))
    found = prose.check_result(result, names, ctx.verdict, facts)
    if not found:
        return result
    sentence = prose.verdict_sentence(ctx.verdict, ctx.verdict_reason, ctx.lang)
    changes = {}
    for key in found:
        top = key.split("[", 1)[0].split(".", 1)[0]
        value = getattr(result, top)
        changes[top] = sentence if isinstance(value, str) else ([sentence] if isinstance(value, list) else {})
    fields = sorted(changes)
    return dataclasses.replace(result, **changes, notes=list(result.notes) + [
        prose.replacement_note("offline", fields, ctx.lang)] + [prose.refusal_note(r) for r in prose.flat_problems(found)])


def _offline_call(settings: AgentSettings, log_dir: Path, step: str, ctx, note: str):
    result = getattr(BACKENDS["offline"](settings, log_dir, []), step)(ctx)
    if step in ("analyse", "draft_commit"):
        result = checked_offline(step, ctx, result)
    _log_offline(log_dir, step, result, note)
    return result


def _log_offline(log_dir: Path, step: str, result, note: str = "") -> None:
    """The offline backend's answers are logged like claude's (no cost), so every section's author is on record."""
    import dataclasses

    from agent.calllog import append_call

    append_call(log_dir, {"step": step, "backend": "offline", "model": "offline", "cost_usd": 0.0, "latency_s": 0.0,
                          "response": dataclasses.asdict(result), "note": note or None})
