"""Experiment versions `X.Y.Z`: parsing, ordering and the base rule (pure functions)."""

from __future__ import annotations

import re
from typing import Iterable, Optional

from minimind.errors import UsageError

# Anchored, digits only: nothing like "../1.4.8" or "1.4.8; rm -rf x" can pass, so a
# valid version is always safe in a path and in a shell word.
_PART = r"(0|[1-9][0-9]{0,5})"
_VERSION = re.compile(rf"{_PART}\.{_PART}\.{_PART}")
# A model module is the living file `model` or a snapshot `model_X_Y_Z`: never a path.
_MODULE = re.compile(rf"model(_{_PART}_{_PART}_{_PART})?")


def parse(text: str) -> tuple[int, int, int]:
    """(X, Y, Z) from 'X.Y.Z'; UsageError for anything else."""
    if not isinstance(text, str) or not _VERSION.fullmatch(text):
        shown = text if isinstance(text, str) and len(text) < 60 else repr(text)[:60]
        raise UsageError(f"invalid version '{shown}': expected X.Y.Z with non-negative integers, e.g. 1.4.8")
    x, y, z = (int(p) for p in text.split("."))
    return x, y, z


def is_valid(text: str) -> bool:
    return isinstance(text, str) and bool(_VERSION.fullmatch(text))


def sort_key(text: str) -> tuple[int, int, int]:
    return parse(text)


def sorted_versions(versions: Iterable[str]) -> list[str]:
    return sorted((v for v in versions if is_valid(v)), key=sort_key)


def default_base(new: str, existing: Iterable[str]) -> Optional[str]:
    """The highest existing version below `new` (PRODUCT.md section 3), or None."""
    below = [v for v in sorted_versions(existing) if sort_key(v) < sort_key(new)]
    return below[-1] if below else None


def is_module_name(name: str) -> bool:
    """'model' or 'model_X_Y_Z' (what models/ may load by name)."""
    return isinstance(name, str) and bool(_MODULE.fullmatch(name))


def module_name(version: str) -> str:
    """'1.4.8' -> 'model_1_4_8' (the snapshot's module name)."""
    parse(version)
    return "model_" + version.replace(".", "_")
