"""Jinja rendering for records, run scripts and commit messages.

Templates come from the lab's `templates/` folder when it has them (researchers may edit
their copy), else from the package. A record, its parts and the commit message are one
template each for every language: their words come from the phrasebook (minimind/phrases.py)
through `t(key, **values)` and `tg(group)`. StrictUndefined turns a missing variable into an
error instead of an empty string, and the `sh` filter shell-quotes every value that
reaches the run script.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

from minimind import phrases
from minimind.errors import MinimindError

PACKAGE_TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
# What the renderer writes (the templates' `pending`) into a record section it has no results
# for yet: an HTML comment, which a Markdown reader does not show. Review and the re-render
# (lifecycle/document/record.py is_pending) tell a pending section by it, not by its prose.
PENDING_MARK = "<!-- minimind:pending -->"


def shell_quote(value: Any) -> str:
    """Quote any value as one shell word; refuses NUL, which no shell word can hold."""
    text = str(value)
    if "\x00" in text:
        raise MinimindError("refusing to put a NUL byte into the run script")
    return shlex.quote(text)


def _fmt(value: Any, digits: int = 4) -> str:
    """Numbers for tables: fixed significant digits, '—' for missing."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def _pct(value: Any) -> str:
    return "—" if value is None else f"{100 * float(value):.1f}%"


def _md_cell(value: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


_FENCE = re.compile(r"^([ \t]*)(`{3,}|~{3,}|#{1,6}(?=\s|$))", re.MULTILINE)
_FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


def _human(value: Any, inline: bool = False) -> str:
    """The human's text, kept inside its own paragraph: a line that would open a code fence
    (``` or ~~~, closed or not) or a heading has those characters escaped, so it cannot swallow
    or split the sections after it; `inline` text (one line of the record) also loses its line
    breaks."""
    text = _FENCE.sub(lambda m: m.group(1) + "".join("\\" + c for c in m.group(2)), str(value))
    return " ".join(text.split("\n")) if inline else text


def _closed(value: Any) -> str:
    """Prose (the agent's, which may quote the human) with any code fence it leaves open closed
    at its end, so a fence never runs on into the record's later sections."""
    text, fence = str(value), None
    for line in text.split("\n"):
        m = _FENCE_LINE.match(line)
        if not m:
            continue
        if fence is None:
            if not (m.group(1)[0] == "`" and "`" in m.group(2)):  # a backtick fence's info has no backtick
                fence = m.group(1)
        elif m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not m.group(2).strip():
            fence = None
    return text if fence is None else f"{text}\n{fence}"


def environment(lab_templates: Optional[Path] = None):
    import jinja2

    search = [str(p) for p in (lab_templates, PACKAGE_TEMPLATES) if p is not None and Path(p).is_dir()]
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(search),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.globals["pending"] = PENDING_MARK
    env.filters.update(sh=shell_quote, fmt=_fmt, pct=_pct, cell=_md_cell, human=_human, closed=_closed)
    return env


# Labs made by minimind <= 0.1 (before the phrasebook) hold a copy per language of the record,
# its parts and the commit message. The one template replaced them: such a copy is moved
# aside as NAME.legacy the first time the one template is rendered, and the package's one is used.
LEGACY_COPIES = {
    "record.md.j2": ("record_en.md.j2", "record_zh.md.j2", "record_preflight_en.md.j2", "record_preflight_zh.md.j2",
                     "record_code_en.md.j2", "record_code_zh.md.j2", "record_next_en.md.j2", "record_next_zh.md.j2"),
    "commit.txt.j2": ("commit_en.txt.j2", "commit_zh.txt.j2"),
}


def upgrade_legacy_copies(lab_templates: Optional[Path], name: str) -> list[str]:
    """Move a lab's per-language copies that `name` replaced aside; returns what it says to the user."""
    if lab_templates is None or (Path(lab_templates) / name).is_file():
        return []  # no lab folder, or the lab keeps its own copy of the one template: that one is used
    moved = []
    for old in LEGACY_COPIES.get(name, ()):
        path = Path(lab_templates) / old
        try:
            os.replace(path, path.with_name(old + ".legacy"))
        except FileNotFoundError:  # not in this lab, or a concurrent render moved it first
            continue
        moved.append(old)
    if not moved:
        return []
    return [f"note: templates/{', '.join(moved)} (one copy per language, minimind <= 0.1) are replaced by the "
            f"package's one templates/{name}; kept as .legacy beside (carry any edits into a copy of {name})."]


def language_context(lang: str) -> dict[str, Any]:
    """What a template needs to write in `lang`: the language and the phrasebook's lookups."""
    return {"lang": lang, "t": lambda key, **values: phrases.phrase(key, lang, **values),
            "tg": lambda group: phrases.group(group, lang)}


def render(name: str, context: dict[str, Any], lab_templates: Optional[Path] = None, lang: Optional[str] = None) -> str:
    """Render template `name`; with `lang`, its phrases are written in that language."""
    import jinja2

    if lang is not None:
        context = {**context, **language_context(lang)}
        for note in upgrade_legacy_copies(lab_templates, name):
            print(note, file=sys.stderr)
    try:
        return environment(lab_templates).get_template(name).render(**context)
    except jinja2.TemplateNotFound:
        raise MinimindError(f"template {name} not found in {lab_templates} or {PACKAGE_TEMPLATES}") from None
    except jinja2.UndefinedError as exc:
        raise MinimindError(f"template {name}: {exc.message}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise MinimindError(f"template {exc.filename or name} line {exc.lineno}: {exc.message}") from None
