"""Which agent backend answers: a registry, and the `auto` rule.

The registry is the one list of backend names: the CLI's --agent choices and the check of
minimind.yaml `agent.backend` are read from it. Each backend says itself whether it can run
here (the claude backend: whether an API key is set). `auto` uses the first backend other
than offline that can run, else offline. When it fails under `auto`, the offline backend
takes over and the record says so; under an explicit `--agent claude` the failure is an
error and nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from agent.base import AgentBackend, AgentError
from minimind.errors import MinimindError
from minimind.settings import AgentSettings


def _offline(settings: AgentSettings, log_dir: Path, prior_logs: list[Path]) -> AgentBackend:
    from agent.offline import OfflineAgent

    return OfflineAgent()


def _claude(settings: AgentSettings, log_dir: Path, prior_logs: list[Path]) -> AgentBackend:
    from agent.claude import ClaudeAgent

    return ClaudeAgent(settings, log_dir, prior_logs=prior_logs)


def _claude_unavailable() -> Optional[str]:
    from agent import claude

    return claude.unavailable()


@dataclass(frozen=True)
class Backend:
    build: Callable[[AgentSettings, Path, list[Path]], AgentBackend]
    unavailable: Callable[[], Optional[str]] = lambda: None  # why it cannot run here; None: it can


BACKENDS: dict[str, Backend] = {"offline": Backend(_offline), "claude": Backend(_claude, _claude_unavailable)}
AUTO = "auto"
FALLBACK = "offline"  # runs anywhere: `auto` without another backend, and the takeover when one fails
CHOICES = (AUTO, *BACKENDS)


def check_name(requested: str, where: str = "--agent") -> str:
    """`requested` when it names a backend or `auto`; MinimindError naming `where` otherwise (as
    minimind.yaml's other settings are refused: the foundation cannot see this registry)."""
    if requested not in CHOICES:
        raise MinimindError(f"{where}: must be one of {', '.join(CHOICES)}; got {requested!r}")
    return requested


def unavailable(requested: str) -> Optional[str]:
    """Why the requested backend cannot run here (None: it can; `auto` always can)."""
    return None if check_name(requested) == AUTO else BACKENDS[requested].unavailable()


def resolve_name(requested: str) -> str:
    if check_name(requested) == AUTO:
        return next((name for name, backend in BACKENDS.items() if name != FALLBACK and backend.unavailable() is None),
                    FALLBACK)
    return requested


def call(requested: str, settings: AgentSettings, log_dir: Path, step: str, ctx, prior_logs: list[Path] | None = None):
    """Run `step` (plan/analyse/draft_commit) on the chosen backend; returns (result, note).

    `note` is empty, or says that offline took over from a failed claude under auto.
    `prior_logs`: call logs of earlier failed attempts of this version (one budget).
    """
    name = resolve_name(requested)
    try:
        backend = BACKENDS[name].build(settings, log_dir, list(prior_logs or []))
        result = getattr(backend, step)(ctx)
        if name == FALLBACK and step in ("analyse", "draft_commit"):
            result = checked_offline(step, ctx, result)
    except AgentError as exc:
        if requested != AUTO or name == FALLBACK:
            raise MinimindError(f"agent ({name}) {step} failed: {exc}") from None
        note = f"The {name} backend failed ({str(exc).splitlines()[0][:160]}); the offline backend wrote this instead."
        return _offline_call(settings, log_dir, step, ctx, note), note
    if name == FALLBACK:
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
    result = getattr(BACKENDS[FALLBACK].build(settings, log_dir, []), step)(ctx)
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
