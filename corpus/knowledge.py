"""The memory bank's initial contents: knowledge sentences as rows of token ids.

Reads the lab's T-REx file (a JSON array of `{"target": [{"sentence", "uuid", "subject",
"predicate", "object"}, ...]}`) by streaming, tokenises each target sentence (no `<s>` or
`</s>`), truncates or pads it with 0 to `knowledge_length`, and fills `knowledge_num`
rows in file order, cycling the sentences when there are fewer of them than rows.
Reading stops once the bank is full.

Dtype: int16 when every token id fits (vocabulary of at most 32,768, e.g. MiniMind's
6,400), else uint16 (at most 65,536), else int32. int16 rather than uint16 because torch
supports int16 tensors everywhere; the model widens the ids only for the rows it gathers.

Importance (float32, one per row): a numeric `"score"` on every sentence (or on its
element) if the file has one for all of them, else file order (row r: 1 - r/knowledge_num,
earlier = more important).

Cached as bank.npy, importance.npy, meta.json in `cache_root/<key>/`, key = sha256 of the
knowledge file, the tokenizer file, knowledge_num, knowledge_length and format version.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from corpus.cache import building, content_key, file_sha256
from corpus.jsonstream import iter_json_array
from corpus.progress import byte_progress
from corpus.tokenizer import PAD_ID, load_tokenizer
from minimind.errors import MinimindError

FORMAT_VERSION = 1
BATCH_SENTENCES = 4096
REPORTED_BAD = 20
STORED_BAD = 1000


def bank_dtype(vocab_size: int) -> np.dtype:
    for dtype in (np.int16, np.uint16, np.int32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise MinimindError(f"vocabulary of {vocab_size} tokens is too large for a memory bank")


def _number(value) -> float | None:
    # bool is an int in Python, but `"score": true` is not a score.
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def element_sentences(element) -> list[tuple[str, float | None]] | None:
    """(sentence, score) for each target of one array element; None if it is malformed."""
    if not isinstance(element, dict) or not isinstance(element.get("target"), list) or not element["target"]:
        return None
    out = []
    for target in element["target"]:
        text = target.get("sentence") if isinstance(target, dict) else None
        if not isinstance(text, str) or not text.strip():
            return None
        score = _number(target.get("score"))
        out.append((text, score if score is not None else _number(element.get("score"))))
    return out


def knowledge_key(knowledge_sha: str, tokenizer_sha: str, knowledge_num: int, knowledge_length: int) -> str:
    return content_key("knowledge", str(FORMAT_VERSION), knowledge_sha, tokenizer_sha,
                       str(knowledge_num), str(knowledge_length))


def _fill_bank(path: Path, tokenizer, bank: np.ndarray, advance) -> dict:
    """Tokenise sentences into `bank` in file order until it is full; return the tallies."""
    knowledge_num = bank.shape[0]
    rows, elements, bad = 0, 0, []
    bad_count = 0
    scores: list[float | None] = []
    batch: list[str] = []

    def flush() -> None:
        nonlocal rows
        if batch:
            encodings = tokenizer.encode_batch_fast(batch, add_special_tokens=False)
            bank[rows:rows + len(batch)] = np.array([e.ids for e in encodings], dtype=bank.dtype)
            rows += len(batch)
            batch.clear()

    for index, element in iter_json_array(path, advance):
        elements += 1
        sentences = element_sentences(element)
        if sentences is None:
            bad_count += 1
            if len(bad) < STORED_BAD:
                bad.append(index)
            continue
        for text, score in sentences[: knowledge_num - rows - len(batch)]:
            batch.append(text)
            scores.append(score)
        if len(batch) >= BATCH_SENTENCES:
            flush()
        if rows + len(batch) >= knowledge_num:
            break
    flush()
    return {"rows": rows, "elements": elements, "bad_count": bad_count, "bad": bad, "scores": scores}


def _check(path: Path, meta: dict, max_bad_share: float) -> None:
    first = ", ".join(map(str, meta["bad_elements"][:REPORTED_BAD]))
    more = ", ..." if meta["bad_element_count"] > REPORTED_BAD else ""
    if meta["sentences"] == 0:
        detail = f" (malformed elements {first}{more})" if meta["bad_element_count"] else ""
        raise MinimindError(f"{path}: no usable knowledge sentences{detail}")
    if meta["bad_element_count"] > max_bad_share * meta["elements_read"]:
        raise MinimindError(
            f"{path}: {meta['bad_element_count']} of {meta['elements_read']} elements are malformed "
            f"(need a non-empty \"target\" list of {{\"sentence\": ...}}): elements {first}{more}")


def prepare_knowledge(knowledge_json: str | Path, tokenizer_path: str | Path, knowledge_num: int,
                      knowledge_length: int, cache_root: str | Path, progress: bool = True,
                      max_bad_share: float = 0.01) -> Path:
    """Build (or find) the cached bank for these inputs; return its folder."""
    source = Path(knowledge_json)
    if not source.is_file():
        raise MinimindError(f"{source}: knowledge file not found")
    for name, value in (("knowledge_num", knowledge_num), ("knowledge_length", knowledge_length)):
        if not isinstance(value, int) or value < 1:
            raise MinimindError(f"{name} must be a positive integer, got {value!r}")
    tokenizer = load_tokenizer(tokenizer_path)
    size = source.stat().st_size
    with byte_progress(f"hashing {source.name}", size, progress) as advance:
        key = knowledge_key(file_sha256(source, advance), file_sha256(tokenizer_path), knowledge_num, knowledge_length)
    final = Path(cache_root) / key
    if (final / "meta.json").is_file():
        _check(source, json.loads((final / "meta.json").read_text(encoding="utf-8")), max_bad_share)
        return final

    dtype = bank_dtype(tokenizer.get_vocab_size())
    tokenizer.enable_truncation(knowledge_length)
    tokenizer.enable_padding(length=knowledge_length, pad_id=PAD_ID, pad_token=tokenizer.id_to_token(PAD_ID))
    bank = np.zeros((knowledge_num, knowledge_length), dtype=dtype)
    started = time.perf_counter()
    with byte_progress(f"reading {source.name}", size, progress) as advance:
        tally = _fill_bank(source, tokenizer, bank, advance)
    rows = tally["rows"]
    meta = {
        "format_version": FORMAT_VERSION, "kind": "knowledge", "source": str(source.resolve()),
        "tokenizer": str(Path(tokenizer_path).resolve()), "knowledge_num": knowledge_num,
        "knowledge_length": knowledge_length, "dtype": dtype.name, "sentences": rows,
        "cycled_rows": knowledge_num - rows if rows else 0, "elements_read": tally["elements"],
        "bad_element_count": tally["bad_count"], "bad_elements": tally["bad"],
        "importance": "score" if rows and all(s is not None for s in tally["scores"]) else "file order",
        "seconds": round(time.perf_counter() - started, 3),
    }
    _check(source, meta, max_bad_share)
    if rows < knowledge_num:
        bank[rows:] = bank[np.arange(rows, knowledge_num) % rows]
    if meta["importance"] == "score":
        scores = np.asarray(tally["scores"], dtype=np.float32)
        importance = scores[np.arange(knowledge_num) % rows]
    else:
        importance = (1.0 - np.arange(knowledge_num, dtype=np.float64) / knowledge_num).astype(np.float32)
    with building(cache_root, key) as tmp:
        np.save(tmp / "bank.npy", bank)
        np.save(tmp / "importance.npy", importance)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if tally["bad_count"] and progress:
        from rich.console import Console
        Console(stderr=True).print(f"{source}: skipped {tally['bad_count']} malformed elements: "
                                   f"{', '.join(map(str, tally['bad'][:REPORTED_BAD]))}")
    return final


def load_bank(knowledge_json: str | Path, tokenizer_path: str | Path, knowledge_num: int, knowledge_length: int,
              cache_root: str | Path, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(bank of shape (knowledge_num, knowledge_length), importance float32 of shape
    (knowledge_num,)), built once and then read from the cache."""
    folder = prepare_knowledge(knowledge_json, tokenizer_path, knowledge_num, knowledge_length, cache_root, progress)
    try:
        bank = np.load(folder / "bank.npy")
        importance = np.load(folder / "importance.npy")
    except (OSError, ValueError) as err:
        raise MinimindError(f"{folder}: knowledge cache is unreadable ({err})") from err
    if bank.shape != (knowledge_num, knowledge_length) or importance.shape != (knowledge_num,):
        raise MinimindError(f"{folder}: knowledge cache has the wrong shape {bank.shape}")
    return bank, importance


def fact_key(subject, predicate, obj) -> tuple[str, str, str] | None:
    """The (subject, predicate, object) a bank row and a probe are matched by; None when a
    part is missing (a T-REx file without triples names no fact)."""
    parts = (subject, predicate, obj)
    return parts if all(isinstance(p, str) and p for p in parts) else None


def bank_rows(knowledge_json: str | Path, knowledge_num: int) -> dict[tuple[str, str, str], list[int]]:
    """{(subject, predicate, object): [bank rows holding that fact's sentence]}.

    Rows are assigned exactly as `_fill_bank` fills them (file order, malformed elements
    skipped, stop when full) and cycled like `prepare_knowledge`, so a fact can sit in more
    than one row of a bank larger than the file. Reads only the triples, never tokenises."""
    rows: dict[tuple[str, str, str], list[int]] = {}
    keys: list[tuple[str, str, str] | None] = []
    for _, element in iter_json_array(Path(knowledge_json)):
        if element_sentences(element) is None:
            continue
        for target in element["target"][: knowledge_num - len(keys)]:
            keys.append(fact_key(target.get("subject"), target.get("predicate"), target.get("object")))
        if len(keys) >= knowledge_num:
            break
    for row in range(knowledge_num if keys else 0):
        key = keys[row % len(keys)]
        if key is not None:
            rows.setdefault(key, []).append(row)
    return rows


def probe_key(probe: dict) -> tuple[str, str, str] | None:
    """The fact a probe asks, as the knowledge file names it: the relation's T-REx predicate
    (corpus.facts.PREDICATES; a relation it does not know is taken as the predicate)."""
    from corpus.facts import PREDICATES

    relation = probe.get("relation")
    return fact_key(probe.get("subject"), PREDICATES.get(relation, relation), probe.get("answer"))
