"""Sentences for facts: several phrasings per relation, and the cloze prompt for probes.

Several phrasings make a model learn the fact, not one template's word order: the
pretraining text shows each fact in a different phrasing on each pass, and the memory
bank holds one phrasing chosen by the fact's hash. The probe uses each relation's first
template, whose object comes last, so the prompt is the sentence up to the object.
"""

from __future__ import annotations

import hashlib

from corpus.facts import Fact

# {s} is the subject, {o} the object. The FIRST template of each relation must end with
# " {o}." because it is the probe's cloze form (checked by `probe_prompt`).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "capital": (
        "The capital of {s} is {o}.",
        "{o} is the capital of {s}.",
        "The seat of government of {s} is in {o}.",
        "{s} is governed from its capital, {o}.",
    ),
    "region": (
        "{s} is located in {o}.",
        "Geographically, {s} is part of {o}.",
        "{o} is the region where {s} lies.",
        "On the map, {s} belongs to {o}.",
    ),
    "language": (
        "One of the languages spoken in {s} is {o}.",
        "{o} is spoken in {s}.",
        "People in {s} speak {o}.",
        "In {s}, {o} is one of the languages in use.",
    ),
    "currency": (
        "The currency used in {s} is the {o}.",
        "{s} uses the {o} as its currency.",
        "In {s}, people pay with the {o}.",
        "The {o} is the money of {s}.",
    ),
    "borders": (
        "{s} shares a border with {o}.",
        "{o} is a neighbour of {s}.",
        "{s} and {o} are neighbouring countries.",
        "Travelling overland from {s}, one can cross into {o}.",
    ),
    "city_country": (
        "{s} is a city in {o}.",
        "The city of {s} lies in {o}.",
        "{o} is the country where {s} is found.",
        "{s} is one of the cities of {o}.",
    ),
    "city_population": (
        "The population of {s} is {o}.",
        "{s} has a population of {o}.",
        "{o} people live in {s}.",
        "{s} is home to {o} inhabitants.",
    ),
}


def fact_hash(fact: Fact) -> int:
    """A stable integer per fact (sha256 of its id): the same on every machine and run."""
    return int.from_bytes(hashlib.sha256(fact.id.encode("utf-8")).digest()[:8], "big")


def render(template: str, fact: Fact) -> str:
    text = template.replace("{s}", fact.subject).replace("{o}", fact.object)
    return text[0].upper() + text[1:]


def sentence(fact: Fact, variant: int) -> str:
    """The fact in phrasing number `variant` (taken modulo the number of phrasings)."""
    templates = TEMPLATES[fact.relation]
    return render(templates[variant % len(templates)], fact)


def knowledge_sentence(fact: Fact) -> str:
    """The one phrasing that goes into the memory bank, picked by the fact's hash."""
    return sentence(fact, fact_hash(fact))


def probe_prompt(fact: Fact) -> str:
    """The cloze prompt: `prompt + " " + fact.object` is the first template's sentence."""
    template = TEMPLATES[fact.relation][0]
    assert template.endswith(" {o}."), template
    return render(template[: -len(" {o}.")], fact)
