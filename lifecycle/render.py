"""Jinja rendering for records, run scripts and commit messages.

Templates come from the lab's `templates/` folder when it has them (researchers may edit
their copy), else from the package. StrictUndefined turns a missing variable into an
error instead of an empty string, and the `sh` filter shell-quotes every value that
reaches the run script.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Optional

from minimind.errors import MinimindError

PACKAGE_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


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
    env.filters.update(sh=shell_quote, fmt=_fmt, pct=_pct, cell=_md_cell)
    return env


def render(name: str, context: dict[str, Any], lab_templates: Optional[Path] = None) -> str:
    import jinja2

    try:
        return environment(lab_templates).get_template(name).render(**context)
    except jinja2.TemplateNotFound:
        raise MinimindError(f"template {name} not found in {lab_templates} or {PACKAGE_TEMPLATES}") from None
    except jinja2.UndefinedError as exc:
        raise MinimindError(f"template {name}: {exc.message}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise MinimindError(f"template {exc.filename or name} line {exc.lineno}: {exc.message}") from None
