"""Where each fact goes (memory bank, pretraining text, both, neither) and its cloze probe.

A fact's split is a pure function of the sha256 of its split key, so it never depends on
which other facts were built (small and full agree on every shared fact) and facts that
reveal each other share a split (see `Fact.split_key`).
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict

from corpus.facts import Fact
from corpus.phrasing import fact_hash, probe_prompt

# mem_only: sentence only in knowledge.json; text_only: only in pretrain.jsonl;
# both: in both; held_out: in neither (the chance control). A quarter each.
SPLITS = ("mem_only", "text_only", "both", "held_out")
IN_KNOWLEDGE = frozenset({"mem_only", "both"})
IN_TEXT = frozenset({"text_only", "both"})

NUM_DISTRACTORS = 9


def split_of(fact: Fact) -> str:
    digest = hashlib.sha256(("split|" + fact.split_key).encode("utf-8")).digest()
    return SPLITS[int.from_bytes(digest[:8], "big") % len(SPLITS)]


def make_probes(facts: list[Fact]) -> tuple[dict[str, list[dict]], int]:
    """One cloze probe per fact, grouped by split, and the number of facts left without a
    probe because their relation has too few other objects for the distractors.

    Distractors are other objects of the same relation, never one the subject really has
    (France borders both Spain and Italy: Italy is no distractor for "France borders Spain").
    """
    objects_of_relation: dict[str, list[str]] = defaultdict(list)
    true_objects: dict[tuple[str, str], set[str]] = defaultdict(set)
    for fact in facts:
        true_objects[fact.relation, fact.subject].add(fact.object)
    for relation in sorted({f.relation for f in facts}):
        objects_of_relation[relation] = sorted({f.object for f in facts if f.relation == relation})

    probes: dict[str, list[dict]] = {split: [] for split in SPLITS}
    skipped = 0
    for fact in facts:
        exclude = true_objects[fact.relation, fact.subject]
        pool = objects_of_relation[fact.relation]
        if len(pool) - len(exclude) < NUM_DISTRACTORS:
            skipped += 1
            continue
        # Sampling a few extra then filtering avoids building a per-fact candidate list
        # (60k facts x 1k population buckets would be slow); the seed makes it stable.
        rng = random.Random(fact_hash(fact))
        sample = rng.sample(pool, NUM_DISTRACTORS + len(exclude))
        distractors = [o for o in sample if o not in exclude][:NUM_DISTRACTORS]
        probes[split_of(fact)].append({
            "id": f"{fact.relation}:{fact_hash(fact):016x}",
            "relation": fact.relation,
            "subject": fact.subject,
            "prompt": probe_prompt(fact),
            "answer": fact.object,
            "distractors": distractors,
        })
    return probes, skipped
