"""The code change a plan may declare (propose_plan's optional `code_change`).

`summary`, `touches` (the functions, classes and methods it will change, e.g.
`MemoryLayer.forward`, `ModelConfig`), `new_settings` (each new config field's name, type,
default and meaning) and `changes_default` (the change alters the model at its default
settings). The code gate (lifecycle/code/codegate.py) holds the code to this declaration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from minimind.errors import UsageError

SYMBOL = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)?$")
SETTING_TYPES = ("int", "float", "bool", "str")
SCHEMA = {
    "type": ["object", "null"], "additionalProperties": False, "required": ["summary", "touches"],
    "properties": {
        "summary": {"type": "string", "maxLength": 400},
        "touches": {"type": "array", "items": {"type": "string", "maxLength": 80}, "minItems": 1, "maxItems": 12},
        "new_settings": {"type": "array", "maxItems": 6, "items": {
            "type": "object", "additionalProperties": False, "required": ["name", "type", "default", "meaning"],
            "properties": {"name": {"type": "string", "maxLength": 60}, "type": {"type": "string", "enum": list(SETTING_TYPES)},
                           "default": {"type": ["boolean", "number", "string"]}, "meaning": {"type": "string", "maxLength": 300}}}},
        "changes_default": {"type": "boolean"},
    },
}


@dataclass(frozen=True)
class CodeChange:
    """What a plan declares about the code it will change (propose_plan's `code_change`)."""

    summary: str
    touches: tuple[str, ...]
    new_settings: tuple[dict, ...] = ()   # {name, type, default, meaning}
    changes_default: bool = False

    @classmethod
    def from_dict(cls, data: Any, where: str = "code_change") -> "CodeChange":
        if not isinstance(data, dict):
            raise UsageError(f"{where} must be an object")
        unknown = sorted(set(data) - {"summary", "touches", "new_settings", "changes_default"})
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}")
        summary = data.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            raise UsageError(f"{where}.summary must be a non-empty string")
        touches = data.get("touches")
        if not isinstance(touches, list) or not touches or not all(isinstance(t, str) and SYMBOL.match(t) for t in touches):
            raise UsageError(f"{where}.touches must be a non-empty list of names like MemoryLayer.forward or ModelConfig")
        settings = data.get("new_settings", [])
        if not isinstance(settings, list):
            raise UsageError(f"{where}.new_settings must be a list")
        for i, s in enumerate(settings):
            if not isinstance(s, dict) or set(s) != {"name", "type", "default", "meaning"}:
                raise UsageError(f"{where}.new_settings[{i}] must have exactly name, type, default, meaning")
            if not isinstance(s["name"], str) or not re.match(r"^[a-z_][a-z0-9_]*$", s["name"]):
                raise UsageError(f"{where}.new_settings[{i}].name must be a snake_case identifier")
            if s["type"] not in SETTING_TYPES:
                raise UsageError(f"{where}.new_settings[{i}].type must be one of {', '.join(SETTING_TYPES)}")
        changes_default = data.get("changes_default", False)
        if not isinstance(changes_default, bool):
            raise UsageError(f"{where}.changes_default must be true or false")
        return cls(summary.strip(), tuple(touches), tuple(dict(s) for s in settings), changes_default)

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "touches": list(self.touches), "new_settings": [dict(s) for s in self.new_settings],
                "changes_default": self.changes_default}

    @property
    def setting_names(self) -> list[str]:
        return [s["name"] for s in self.new_settings]
