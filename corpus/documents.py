"""Pretraining documents: short paragraphs of several facts about one subject.

Evaluation prompts a model with a document's first 30 tokens, so documents are
paragraphs of roughly 60 to 180 tokens (`MIN_CHARS`..`MAX_CHARS` characters), each about
one country or the cities of one country. Every text fact appears once per pass, in a
different phrasing each pass.

No document may give away a fact that is not in the text: a city's population sentence
sits in its country's city paragraph only when "city is in country" is itself a text
fact; otherwise it goes into a paragraph of unrelated cities.
"""

from __future__ import annotations

import random
from collections import defaultdict

from corpus.facts import Fact
from corpus.phrasing import fact_hash, sentence

MIN_CHARS = 250  # a paragraph is flushed once it is at least this long ...
MAX_CHARS = 800  # ... and a chunk never pushes it past roughly this


def _groups(facts: list[Fact]) -> tuple[dict[str, list[list[Fact]]], list[list[Fact]]]:
    """Facts gathered by paragraph subject: {group name: [units]} and the loose units.

    A unit is the facts that stay together (one city's country and population)."""
    cities_in_text = {f.subject for f in facts if f.relation == "city_country"}
    groups: dict[str, list[list[Fact]]] = defaultdict(list)
    city_units: dict[str, list[Fact]] = defaultdict(list)
    loose: list[list[Fact]] = []
    for fact in facts:
        if fact.relation in ("city_country", "city_population"):
            if fact.subject in cities_in_text:
                city_units[fact.subject].append(fact)
            else:
                loose.append([fact])
        else:
            groups[f"country|{fact.group}"].append([fact])
    for city, unit in sorted(city_units.items()):
        groups[f"cities|{unit[0].group}"].append(unit)
    return dict(sorted(groups.items())), loose


def _chunks(sentences: list[str], rng: random.Random) -> list[list[str]]:
    """Split one subject's sentences into pieces of a random target length, so that a short
    remainder can join the next subject's paragraph without passing MAX_CHARS."""
    chunks, current, length = [], [], 0
    target = rng.randint(MIN_CHARS + 50, MAX_CHARS - MIN_CHARS)
    for text in sentences:
        current.append(text)
        length += len(text) + 1
        if length >= target:
            chunks.append(current)
            current, length = [], 0
            target = rng.randint(MIN_CHARS + 50, MAX_CHARS - MIN_CHARS)
    if current:
        chunks.append(current)
    return chunks


def _pack(units_stream: list[list[str]], rng: random.Random) -> list[str]:
    """Paragraphs from a stream of subjects' sentence lists."""
    documents, current = [], []

    def length(parts: list[str]) -> int:
        return sum(len(p) + 1 for p in parts)

    for sentences in units_stream:
        for chunk in _chunks(sentences, rng):
            current.extend(chunk)
            if length(current) >= MIN_CHARS:
                documents.append(" ".join(current))
                current = []
    if current:
        if documents and len(documents[-1]) + length(current) <= MAX_CHARS:
            documents[-1] = documents[-1] + " " + " ".join(current)
        else:
            documents.append(" ".join(current))
    return documents


def _sentences(units: list[list[Fact]], variant: int, rng: random.Random) -> list[str]:
    units = list(units)
    rng.shuffle(units)
    out = []
    for unit in units:
        for fact in unit:
            out.append(sentence(fact, fact_hash(fact) + variant))
    return out


def build_documents(text_facts: list[Fact], passes: int, seed: str) -> list[str]:
    """All pretraining paragraphs for `passes` passes over the text facts, in a stable
    shuffled order. Each pass uses the next phrasing of every fact."""
    groups, loose = _groups(sorted(text_facts))
    documents: list[str] = []
    for variant in range(passes):
        rng = random.Random(f"{seed}|pass{variant}")
        names = list(groups)
        rng.shuffle(names)
        stream = [_sentences(groups[name], variant, rng) for name in names]
        documents += _pack(stream, rng)
        documents += _pack([_sentences(loose, variant, rng)], rng)
    random.Random(f"{seed}|order").shuffle(documents)
    return documents
