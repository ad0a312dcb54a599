"""What review requires of a record (the seed guide's quality standard, 质量标准), as pure rules.

A clear goal and testable hypothesis, the AI thinking recorded, the git change record,
training completed or its stop explained, an inference evaluation, and a conclusion with
next steps. `minimind review` applies them before it approves.
"""

from __future__ import annotations

import re

from minimind import phrases

from lifecycle.document.record import PENDING_MARK, SECTION_IDS, heading, is_pending, section_of


def split_sections(text: str) -> dict[str, str]:
    """{'## heading' text: body} of a Markdown record."""
    sections: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if line.startswith("## "):
            name = line[3:].strip()
            sections[name] = ""
        elif name is not None:
            sections[name] += line + "\n"
    return sections


def _field_text(section: str, labels: str) -> str:
    """The text under a `- **Label:**` bullet, up to the next bullet or sub-heading."""
    match = re.search(rf"\*\*(?:{labels}):\*\*(.*?)(?=^- \*\*|^### |\Z)", section, re.S | re.M)
    return match.group(1).strip() if match else ""


def _template_pattern(key: str) -> str:
    """A regex for phrase `key` as any language wrote it into a record, each {field} any text."""
    return "|".join(re.sub(r"\\\{\w+\\\}", ".*", re.escape(phrases.text(key, lang))) for lang in phrases.LANGS)


def _label(key: str) -> str:
    """The labels of a record bullet ('- **Goal:**') in every language, as a regex alternation."""
    return "|".join(re.escape(phrases.text(key, lang).removeprefix("- **").removesuffix(":**")) for lang in phrases.LANGS)


def _thinking_text(section: str) -> str:
    """The agent's own thinking: without the authorship line and the template's parts after it."""
    authorship = re.compile(_template_pattern("record.written_by"))
    lines = [line for line in section.splitlines() if not authorship.fullmatch(line.strip())]
    body = []
    for line in lines:
        if line.startswith("**"):
            break
        body.append(line)
    return "\n".join(body).strip()


def quality_problems(text: str, derived_state: str, stop_reason: str | None, lang: str,
                     analysis_error: str | None = None, rendered_beside: str | None = None,
                     version: str = "VERSION") -> list[str]:
    """What the record lacks, as short lines (empty = meets the standard). Pure.

    `analysis_error`: why the agent's analysis failed after training (state.json);
    `rendered_beside`: where a render with the results went when the edited record could
    not be merged. Each turns the generic "missing" lines into the one thing to do."""
    sections = split_sections(text)
    problems = []
    missing = [heading(i, lang) for i in SECTION_IDS if heading(i, lang) not in sections]
    problems += [f"section '{h}' is missing" for h in missing]
    get = lambda section_id: section_of(sections, section_id, lang)  # noqa: E731
    legacy = PENDING_MARK not in text  # a record rendered before the marker: its placeholder prose tells
    basic = get("basic")
    if not _field_text(basic, _label("record.goal")):
        problems.append("the goal is empty")
    if not _field_text(basic, _label("record.hypothesis")):
        problems.append("the hypothesis is empty")
    if len(_thinking_text(get("thinking"))) < 40:
        problems.append("the AI thinking process is not recorded")
    if "`" not in get("git"):
        problems.append("the git change record is empty")
    if derived_state in ("running", "drafted", "lost"):
        problems.append(f"training has not completed (state: {derived_state})")
    elif derived_state == "failed":
        problems.append("training failed: the record must explain it before approval")
    elif derived_state in ("stopped", "guardrail_stopped") and not stop_reason:
        problems.append(f"the run was {derived_state} without a recorded reason")
    if rendered_beside:
        problems.append(f"the record was edited by hand and the results could not be merged into it: they are in "
                        f"{rendered_beside}; copy them in (or move your edits there) and review again")
        return problems
    evaluation = get("evaluation")
    if is_pending(evaluation, legacy) or "|" not in evaluation:
        problems.append("the inference evaluation is missing (minimind eval)")
    conclusion = get("conclusion")
    if analysis_error and not re.search(r"^- \S", conclusion, re.M):
        problems.append(f"the analysis failed after training ({analysis_error}); training is {derived_state}. "
                        f"Redo only the analysis with: minimind analyse {version}")
    elif is_pending(conclusion, legacy) or not re.search(r"^- \S", conclusion, re.M):
        problems.append("the conclusion with next steps is missing")
    return problems
