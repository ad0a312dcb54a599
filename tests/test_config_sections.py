"""Who changes each section of an experiment config has one owner (minimind/config.py):
`new`, the agent's tools and prompts and the analysis read it, so they cannot disagree."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

from minimind.config import (AGENT_SECTIONS, DERIVED_SECTIONS, FIXED_SECTIONS, HUMAN_SECTIONS, LAB_POLICY_SECTIONS,
                             ExperimentConfig)

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("minimind", "models", "corpus", "training", "agent", "lifecycle", "bench")
# Lists of section names that say nothing about who changes them, and what each one is.
NOT_OWNERSHIP = {"training/evaluate.py": "the lab settings a standalone evaluation builds its config from"}


def config_sections() -> list[str]:
    """The fields of ExperimentConfig that hold a section (a dict or a config dataclass)."""
    hints = typing.get_type_hints(ExperimentConfig)
    out = []
    for f in dataclasses.fields(ExperimentConfig):
        hint = hints[f.name]
        types = [t for t in typing.get_args(hint) if t is not type(None)] if typing.get_origin(hint) is typing.Union else [hint]
        if any(dataclasses.is_dataclass(t) or typing.get_origin(t) is dict for t in types):
            out.append(f.name)
    return out


def test_every_section_has_exactly_one_owner():
    owners = [*AGENT_SECTIONS, *FIXED_SECTIONS, *DERIVED_SECTIONS]
    assert sorted(owners) == sorted(config_sections())  # none twice, none missing
    assert FIXED_SECTIONS == (*HUMAN_SECTIONS, *LAB_POLICY_SECTIONS) and "swanlab" in FIXED_SECTIONS


def test_the_agent_may_change_its_sections_and_sees_every_fixed_one():
    from agent.tools import allowed_config_keys
    from lifecycle.running.analyse import fixed_settings

    schema = {f"{section}.x": {} for section in config_sections()}
    assert allowed_config_keys(schema) == [f"{section}.x" for section in config_sections() if section in AGENT_SECTIONS]
    shown = fixed_settings({section: {"x": 1} for section in config_sections()})
    assert [key.split(".")[0] for key in shown] == list(FIXED_SECTIONS)


def test_no_module_keeps_its_own_list_of_sections():
    names = set(config_sections())
    copies = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel == "minimind/config.py" or rel in NOT_OWNERSHIP:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2 and all(
                        isinstance(e, ast.Constant) and e.value in names for e in node.elts):
                    copies.append(f"{rel}:{node.lineno}")
    assert copies == []
