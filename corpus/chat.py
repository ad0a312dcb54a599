"""The bundled SFT conversations: questions and answers about the same real facts.

`data build` writes, next to pretrain.jsonl and probes.json:
  sft.jsonl        training conversations, MiniMind's SFT format
  sft_eval.jsonl   held-out conversations (assistant-token loss at evaluation)
  sft_split.json   {"taught": [probe ids], "eval_only": [probe ids]}: which probes SFT taught

The split keeps the probe splits' meaning:
  - a held_out fact is never taught (it stays the chance control), it is asked in sft_eval;
  - a quarter of the mem_only and of the text_only facts, chosen by a hash of the fact
    (EVAL_ONLY_SHARE), is asked only at evaluation: whether SFT teaches the model to *use*
    what pretraining put in its memory or text, beyond the questions it was drilled on;
  - every other fact (the rest of mem_only and text_only, all of both) is taught.
Each taught fact gets PHRASINGS_PER_FACT questions out of several phrasings; every third
conversation carries a system prompt. Answers are one sentence naming the object.
"""

from __future__ import annotations

import hashlib
import json
import random

from corpus.facts import Fact
from corpus.phrasing import fact_hash
from corpus.splits import split_of

EVAL_ONLY_SHARE = 0.25
EVAL_ONLY_SPLITS = ("mem_only", "text_only")
PHRASINGS_PER_FACT = 2
SYSTEM_PROMPT = "You are a concise geography assistant. Answer in one sentence."

QUESTIONS = {
    "capital": ("What is the capital of {s}?", "Which city is the capital of {s}?", "Name the capital of {s}."),
    "region": ("In which region is {s}?", "Where is {s} located?", "Which region does {s} belong to?"),
    "language": ("What language is spoken in {s}?", "Which language do people use in {s}?",
                 "Name a language of {s}."),
    "currency": ("What currency does {s} use?", "What is the currency of {s}?", "Which money is used in {s}?"),
    "borders": ("Name a country that borders {s}.", "Which country shares a border with {s}?",
                "Give one neighbour of {s}."),
    "city_country": ("In which country is {s}?", "Which country is {s} in?", "{s} is a city in which country?"),
    "city_population": ("How many people live in {s}?", "What is the population of {s}?",
                        "How large is the population of {s}?"),
}
ANSWERS = {
    "capital": "The capital of {s} is {o}.",
    "region": "{s} is in {o}.",
    "language": "People in {s} speak {o}.",
    "currency": "{s} uses the {o}.",
    "borders": "{s} borders {o}.",
    "city_country": "{s} is in {o}.",
    "city_population": "The population of {s} is {o}.",
}


def _fill(template: str, fact: Fact) -> str:
    text = template.replace("{s}", fact.subject).replace("{o}", fact.object)
    return text[0].upper() + text[1:]


def question(fact: Fact, phrasing: int = 0) -> str:
    return question_text(fact.relation, fact.subject, phrasing)


def question_text(relation: str, subject: str, phrasing: int = 0) -> str:
    """The question about (relation, subject) in phrasing `phrasing`: how chat QA asks a probe."""
    options = QUESTIONS[relation]
    text = options[phrasing % len(options)].replace("{s}", subject)
    return text[0].upper() + text[1:]


def answer(fact: Fact) -> str:
    return _fill(ANSWERS[fact.relation], fact)


def role(fact: Fact) -> str:
    """'taught', 'eval_only' or 'held_out': what SFT does with this fact."""
    split = split_of(fact)
    if split == "held_out":
        return "held_out"
    if split in EVAL_ONLY_SPLITS:
        digest = hashlib.sha256(("sft|" + fact.split_key).encode("utf-8")).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 < EVAL_ONLY_SHARE:
            return "eval_only"
    return "taught"


def _conversation(fact: Fact, phrasing: int, with_system: bool) -> dict:
    turns = [{"role": "system", "content": SYSTEM_PROMPT}] if with_system else []
    turns += [{"role": "user", "content": question(fact, phrasing)}, {"role": "assistant", "content": answer(fact)}]
    return {"conversations": turns}


def probe_id(fact: Fact) -> str:
    return f"{fact.relation}:{fact_hash(fact):016x}"  # as corpus.splits.make_probes names it


def build_conversations(facts: list[Fact], probe_ids: set[str]) -> tuple[str, str, dict, dict]:
    """(sft.jsonl text, sft_eval.jsonl text, sft_split.json dict, summary).

    probe_ids: the ids of the probes that exist (a fact whose relation lacks distractors has none)."""
    train, evaluation = [], []
    split = {"taught": [], "eval_only": []}
    counts = {"taught": 0, "eval_only": 0, "held_out": 0}
    for fact in facts:
        kind = role(fact)
        counts[kind] += 1
        rng = random.Random(fact_hash(fact))
        if kind == "taught":
            for phrasing in rng.sample(range(len(QUESTIONS[fact.relation])), PHRASINGS_PER_FACT):
                train.append(_conversation(fact, phrasing, with_system=len(train) % 3 == 2))
        else:
            evaluation.append(_conversation(fact, rng.randrange(len(QUESTIONS[fact.relation])),
                                            with_system=len(evaluation) % 3 == 2))
        if kind != "held_out" and probe_id(fact) in probe_ids:
            split[kind].append(probe_id(fact))
    random.Random("minimind-sft").shuffle(train)

    def jsonl(items):
        return "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in items)

    summary = {"train_conversations": len(train), "eval_conversations": len(evaluation),
               "facts": counts, "eval_only_share": EVAL_ONLY_SHARE, "eval_only_splits": list(EVAL_ONLY_SPLITS)}
    return jsonl(train), jsonl(evaluation), split, summary
