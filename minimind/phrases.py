"""The phrasebook: every sentence minimind writes for a person, in each record language.

The phrases live in `minimind/phrases.yaml`, grouped by the module that writes them
(`offline.start`, `verdict.met`, `record.section.thinking`, ...). One book, so that a zh
record gets no English sentence from code, and a record, a commit message or a verdict
is changed once for every language.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

LANGS = ("en", "zh")
DEFAULT_LANG = "en"  # a language the book does not have is written in English
BOOK_FILE = Path(__file__).with_name("phrases.yaml")


@lru_cache(maxsize=1)
def _book() -> dict[str, dict[str, str]]:
    """{'group.key': {'en': text, 'zh': text}} from the YAML file's two levels."""
    # the C loader where libyaml is there: the book is read by `status` and `--help` too (QUALITY.md start-up)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    data = yaml.load(BOOK_FILE.read_text(encoding="utf-8"), Loader=loader) or {}
    return {f"{group}.{key}": texts for group, entries in data.items() for key, texts in entries.items()}


def keys() -> tuple[str, ...]:
    """Every phrase key, in the book's order."""
    return tuple(_book())


def text(key: str, lang: str = DEFAULT_LANG) -> str:
    """The raw phrase (its {fields} unfilled); KeyError names an unknown key."""
    texts = _book()[key]
    return texts[lang] if lang in texts else texts[DEFAULT_LANG]


def phrase(key: str, lang: str = DEFAULT_LANG, **values: Any) -> str:
    """The phrase `key` in `lang` with its {fields} filled from `values`."""
    return text(key, lang).format(**values)


def has(key: str) -> bool:
    return key in _book()


def group(name: str, lang: str = DEFAULT_LANG) -> dict[str, str]:
    """{key without the 'name.' prefix: raw phrase} for one group, in one language."""
    prefix = name + "."
    return {key[len(prefix):]: text(key, lang) for key in _book() if key.startswith(prefix)}


def languages(key: str) -> tuple[str, ...]:
    """The languages the book writes `key` in (tests/test_phrases.py wants all of LANGS)."""
    return tuple(_book()[key])
