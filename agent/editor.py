"""Anthropic's text editor tool, served over a scratch copy of the lab's model file.

The model sees one file, `/lab/models/model.py`; what it edits is a string in this process,
never a path on disk. Three commands are served: `view`, `str_replace`, and `insert`
(with `new_str` or `insert_text`). Everything else (`create`, `undo_edit`, any other path,
`..`) is answered with an error, as is an edit that changes nothing.

Unlike the reference implementation (anthropic-quickstarts' edit.py) the file's tabs and
line endings are never rewritten, and an ambiguous `old_str` is reported with the start
line of every occurrence across the whole text, multi-line matches included.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

PATH = "/lab/models/model.py"
TOOL = {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}
MAX_CALLS = 40          # editor calls in one implement step
SNIPPET = 4             # lines of context shown around an edit
MAX_VIEW_LINES = 1200


@dataclass
class Edit:
    number: int
    command: str
    start: int          # first line of the new text in the file after this edit (1-based)
    end: int            # its last line (start - 1 for a pure deletion)
    old: str
    new: str
    reason: str = ""    # set for a carried range: the reason an earlier round gave for these lines


@dataclass
class ScratchEditor:
    text: str
    max_calls: int = MAX_CALLS
    calls: int = 0
    edits: list[Edit] = field(default_factory=list)
    # The line ranges of an earlier candidate's hunks with their reasons (a revision after the
    # human rejected it): they move with this step's edits, so the final diff's old hunks keep them.
    carried: list[Edit] = field(default_factory=list)

    # --- the tool -------------------------------------------------------------------------
    def handle(self, tool_input: Any) -> tuple[str, bool]:
        """(tool_result text, is_error) for one call."""
        self.calls += 1
        if self.calls > self.max_calls:
            return (f"the editor call limit ({self.max_calls}) is reached: call submit_change now", True)
        if not isinstance(tool_input, dict):
            return ("the input must be an object", True)
        command, path = tool_input.get("command"), tool_input.get("path")
        if path != PATH:
            return (f"only {PATH} can be viewed or edited here (got {path!r})", True)
        handler = {"view": self._view, "str_replace": self._str_replace, "insert": self._insert}.get(command)
        if handler is None:
            return (f"command {command!r} is not served: only view, str_replace and insert on {PATH}", True)
        try:
            return handler(tool_input), False
        except EditError as exc:
            return str(exc), True

    # --- commands -------------------------------------------------------------------------
    def _view(self, tool_input: dict) -> str:
        lines = self.text.splitlines()
        start, end = 1, len(lines)
        view_range = tool_input.get("view_range")
        if view_range is not None:
            if (not isinstance(view_range, list) or len(view_range) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in view_range)):
                raise EditError("view_range must be [start, end] (1-based; end -1 means to the end)")
            start, end = view_range[0], (len(lines) if view_range[1] == -1 else view_range[1])
            if not 1 <= start <= max(len(lines), 1) or end < start or end > len(lines):
                raise EditError(f"view_range {view_range} is outside the file's {len(lines)} lines")
        if end - start + 1 > MAX_VIEW_LINES:
            end = start + MAX_VIEW_LINES - 1
        return _numbered(lines, start, end) + (f"\n[... lines {end + 1}-{len(lines)} not shown: use view_range]"
                                               if end < len(lines) and view_range is None else "")

    def _str_replace(self, tool_input: dict) -> str:
        old, new = tool_input.get("old_str"), tool_input.get("new_str", "")
        if not isinstance(old, str) or old == "":
            raise EditError("str_replace needs old_str: the exact text to replace")
        if not isinstance(new, str):
            raise EditError("new_str must be a string")
        if old == new:
            raise EditError("old_str and new_str are identical: this edit would change nothing")
        starts = _occurrences(self.text, old)
        if not starts:
            raise EditError(self._no_match(old, new))
        if len(starts) > 1:
            lines = [self.text.count("\n", 0, i) + 1 for i in starts]
            raise EditError(f"old_str occurs {len(starts)} times, starting at lines {', '.join(map(str, lines))}: "
                            "include more surrounding lines so that it occurs exactly once")
        index = starts[0]
        return self._apply(index, old, new, "str_replace")

    def _insert(self, tool_input: dict) -> str:
        line = tool_input.get("insert_line")
        new = tool_input.get("new_str", tool_input.get("insert_text"))
        lines = self.text.splitlines(keepends=True)
        if not isinstance(line, int) or isinstance(line, bool) or not 0 <= line <= len(lines):
            raise EditError(f"insert_line must be an integer from 0 (the start) to {len(lines)} (the end)")
        if not isinstance(new, str) or new == "":
            raise EditError("insert needs new_str (or insert_text): the text to insert")
        if not new.endswith("\n"):
            new += "\n"
        index = sum(len(x) for x in lines[:line])
        if line == len(lines) and self.text and not self.text.endswith("\n"):
            new = "\n" + new
        return self._apply(index, "", new, "insert")

    # --- helpers --------------------------------------------------------------------------
    def _apply(self, index: int, old: str, new: str, command: str) -> str:
        start = self.text.count("\n", 0, index) + 1
        old_lines, new_lines = old.count("\n"), new.count("\n")
        self.text = self.text[:index] + new + self.text[index + len(old):]
        delta = new_lines - old_lines
        end = max(start, start + new_lines - (1 if new.endswith("\n") else 0)) if new else start - 1
        for edit in self.edits + self.carried:  # earlier edits below this one move with it
            if edit.start > start + old_lines:
                edit.start, edit.end = edit.start + delta, edit.end + delta
            elif edit.end >= start:  # overlapped: its range grows to cover the later edit
                edit.start, edit.end = min(edit.start, start), max(end, edit.end + delta)
        number = len(self.edits) + 1
        self.edits.append(Edit(number, command, start, end, old, new))
        lines = self.text.splitlines()
        first, last = max(1, start - SNIPPET), min(len(lines), max(end, start) + SNIPPET)
        return (f"edit #{number} applied ({command} at line {start}). Give its reason in submit_change. "
                f"The file now reads, lines {first}-{last}:\n" + _numbered(lines, first, last))

    def _no_match(self, old: str, new: str) -> str:
        if len(new.strip()) >= 20 and new in self.text:  # the edit was probably made already
            line = self.text.count("\n", 0, self.text.index(new)) + 1
            extra = f" The replacement text is already in the file at line {line}."
        else:
            extra = ""
        lines = self.text.splitlines()
        want = old.splitlines() or [old]
        size = len(want)
        best, best_at = -1.0, 0
        probe = "\n".join(want)
        for i in range(0, max(len(lines) - size + 1, 1)):
            ratio = difflib.SequenceMatcher(None, "\n".join(lines[i:i + size]), probe, autojunk=False).ratio()
            if ratio > best:
                best, best_at = ratio, i
        first, last = best_at + 1, min(len(lines), best_at + size)
        return (f"old_str was not found in {PATH} (it must match exactly, whitespace included).{extra} "
                f"The closest region ({best:.0%} similar) is lines {first}-{last}:\n" + _numbered(lines, first, last))


class EditError(Exception):
    pass


def _occurrences(text: str, needle: str) -> list[int]:
    found, start = [], text.find(needle)
    while start != -1:
        found.append(start)
        start = text.find(needle, start + 1)
    return found


def _numbered(lines: list[str], first: int, last: int) -> str:
    return "\n".join(f"{n:6}\t{lines[n - 1]}" for n in range(first, last + 1))
