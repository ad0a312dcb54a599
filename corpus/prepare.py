"""`minimind data prepare`: tokenise a pretraining JSONL into a content-keyed token cache.

The file is streamed in fixed-size chunks, so peak memory does not depend on its size
(a 10 GB `merged_pretrain.jsonl` works). Each good line `{"text": ...}` becomes one
document `<s> text </s>` appended to `tokens.bin` (uint16); `offsets.bin` (int64,
num_docs + 1 entries) says where each document starts. Malformed lines are counted and
reported by line number; too many of them fail the command, so no run trains on a
silently truncated dataset. Blank and whitespace-only lines are skipped and counted on
their own (`blank_lines`): they are layout, not damage, and do not count toward the limit.

Cache layout, `cache_root/<key>/`: tokens.bin, offsets.bin, meta.json, where key =
sha256(file content, tokenizer content, format version).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from corpus.cache import building, content_key, file_sha256
from corpus.fastencode import batch_encoder
from corpus.knowledge import load_bank, prepare_knowledge  # noqa: F401  (re-exported for the CLI)
from corpus.progress import byte_progress
from corpus.tokenizer import BOS_ID, EOS_ID, load_tokenizer
from minimind.errors import MinimindError

FORMAT_VERSION = 2  # 2: blank lines are counted apart from malformed ones
TOKEN_DTYPE = np.uint16
OFFSET_DTYPE = np.int64
CHUNK_BYTES = 1 << 20  # lines are read and tokenised about 1 MB at a time
REPORTED_BAD_LINES = 20  # line numbers named in an error message
STORED_BAD_LINES = 1000  # line numbers kept in meta.json


@dataclass
class _Tally:
    lines: int = 0
    blank: int = 0
    docs: int = 0
    tokens: int = 0
    bad_lines: list[int] = field(default_factory=list)
    bad_count: int = 0
    bad_reasons: Counter = field(default_factory=Counter)

    def bad(self, line_no: int, reason: str) -> None:
        self.bad_count += 1
        self.bad_reasons[reason] += 1
        if len(self.bad_lines) < STORED_BAD_LINES:
            self.bad_lines.append(line_no)


class TokenCache:
    """A prepared token cache, memory-mapped: documents are read on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.meta = json.loads((self.path / "meta.json").read_text(encoding="utf-8"))
            self.offsets = np.memmap(self.path / "offsets.bin", dtype=OFFSET_DTYPE, mode="r")
            tokens_file = self.path / "tokens.bin"
            self.tokens = (np.memmap(tokens_file, dtype=TOKEN_DTYPE, mode="r") if tokens_file.stat().st_size
                           else np.zeros(0, dtype=TOKEN_DTYPE))
        except (OSError, ValueError) as err:
            raise MinimindError(f"{self.path}: not a readable token cache ({err})") from err
        if len(self.offsets) != self.meta.get("num_docs", -1) + 1 or int(self.offsets[-1]) != len(self.tokens):
            raise MinimindError(f"{self.path}: token cache is truncated or inconsistent with its meta.json")

    @property
    def num_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def bad_lines(self) -> list[int]:
        """Line numbers (1-based) of malformed lines; the first 1000 are stored."""
        return list(self.meta["bad_lines"])

    def doc(self, i: int) -> np.ndarray:
        """Document i as uint16 token ids, `<s>` first and `</s>` last."""
        if not 0 <= i < self.num_docs:
            raise IndexError(f"document {i} out of range (0..{self.num_docs - 1})")
        return self.tokens[int(self.offsets[i]):int(self.offsets[i + 1])]

    def __len__(self) -> int:
        return self.num_docs

    def __repr__(self) -> str:
        return f"TokenCache({str(self.path)!r}, num_docs={self.num_docs}, num_tokens={self.num_tokens})"


def _parse_line(raw: bytes, line_no: int, tally: _Tally) -> str | None:
    try:
        obj = json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        tally.bad(line_no, "invalid JSON")
        return None
    text = obj.get("text") if isinstance(obj, dict) else None
    if not isinstance(text, str):
        tally.bad(line_no, "no string \"text\"")
        return None
    if not text.strip():
        tally.bad(line_no, "empty text")
        return None
    return text


def _tokenise_lines(lines: list[bytes], encode, tally: _Tally, tokens_out, offsets_out) -> None:
    texts = []
    for raw in lines:
        tally.lines += 1
        if not raw.strip():
            tally.blank += 1
            continue
        text = _parse_line(raw, tally.lines, tally)
        if text is not None:
            texts.append(text)
    if not texts:
        return
    flat, lengths = encode(texts)
    # Interleave <s> and </s> around each document without a Python loop over tokens.
    sizes = lengths + 2
    ends = np.cumsum(sizes)
    starts = ends - sizes
    out = np.empty(int(ends[-1]), dtype=TOKEN_DTYPE)
    specials = np.zeros(len(out), dtype=bool)
    specials[starts] = specials[ends - 1] = True
    out[starts] = BOS_ID
    out[ends - 1] = EOS_ID
    out[~specials] = flat
    tokens_out.write(out.tobytes())
    offsets_out.write((ends + tally.tokens).astype(OFFSET_DTYPE).tobytes())
    tally.docs += len(texts)
    tally.tokens += len(out)


def _tokenise_file(path: Path, tokenizer, out_dir: Path, advance, chunk_bytes: int) -> _Tally:
    tally = _Tally()
    encode = batch_encoder(tokenizer, dtype=TOKEN_DTYPE)
    with open(path, "rb") as source, open(out_dir / "tokens.bin", "wb") as tokens_out, \
            open(out_dir / "offsets.bin", "wb") as offsets_out:
        offsets_out.write(np.zeros(1, dtype=OFFSET_DTYPE).tobytes())
        pending = b""
        while chunk := source.read(chunk_bytes):
            advance(len(chunk))
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()  # an incomplete last line waits for the next chunk
            _tokenise_lines(lines, encode, tally, tokens_out, offsets_out)
        if pending:
            _tokenise_lines([pending], encode, tally, tokens_out, offsets_out)
    return tally


def _check_bad_share(source: Path, meta: dict, max_bad_share: float) -> None:
    bad, total = meta["bad_line_count"], meta["num_lines"] - meta.get("blank_lines", 0)
    first = ", ".join(str(n) for n in meta["bad_lines"][:REPORTED_BAD_LINES])
    more = ", ..." if bad > REPORTED_BAD_LINES else ""
    if meta["num_docs"] == 0:
        what = (f"all {total} non-blank lines are malformed (lines {first}{more})" if total
                else f"all {meta['num_lines']} lines are blank" if meta["num_lines"] else "the file is empty")
        raise MinimindError(f"{source}: no usable documents: {what}")
    if bad > max_bad_share * total:
        raise MinimindError(
            f"{source}: {bad} of {total} lines are malformed ({bad / total:.2%}, more than the allowed "
            f"{max_bad_share:.2%}): lines {first}{more}")


def pretrain_key(jsonl_sha256: str, tokenizer_sha256: str) -> str:
    return content_key("pretrain", str(FORMAT_VERSION), jsonl_sha256, tokenizer_sha256)


def find_pretrain_cache(jsonl_path: str | Path, tokenizer_path: str | Path, cache_root: str | Path) -> TokenCache | None:
    """The prepared token cache of this file and tokenizer, or None (nothing is built)."""
    source = Path(jsonl_path)
    if not source.is_file() or not Path(tokenizer_path).is_file():
        return None
    final = Path(cache_root) / pretrain_key(file_sha256(source), file_sha256(tokenizer_path))
    return TokenCache(final) if (final / "meta.json").is_file() else None


def prepare_pretrain(jsonl_path: str | Path, tokenizer_path: str | Path, cache_root: str | Path,
                     max_bad_share: float = 0.01, progress: bool = True,
                     chunk_bytes: int = CHUNK_BYTES) -> TokenCache:
    """Tokenise `jsonl_path` into `cache_root/<key>/` (or reuse it) and return the cache.

    Fails with MinimindError when the file is missing or empty, has no usable line, or
    more than `max_bad_share` of its lines are malformed (the message names the lines)."""
    source = Path(jsonl_path)
    if not source.is_file():
        raise MinimindError(f"{source}: pretraining file not found")
    if not 0.0 <= max_bad_share <= 1.0:
        raise MinimindError(f"max_bad_share must be between 0 and 1, got {max_bad_share}")
    tokenizer = load_tokenizer(tokenizer_path)
    vocab_size = tokenizer.get_vocab_size()
    if vocab_size > np.iinfo(TOKEN_DTYPE).max + 1:
        raise MinimindError(f"{tokenizer_path}: vocabulary of {vocab_size} does not fit the uint16 token cache")
    size = source.stat().st_size
    with byte_progress(f"hashing {source.name}", size, progress) as advance:
        source_sha = file_sha256(source, advance)
    tokenizer_sha = file_sha256(tokenizer_path)
    key = pretrain_key(source_sha, tokenizer_sha)
    final = Path(cache_root) / key
    if (final / "meta.json").is_file():
        cache = TokenCache(final)
        _check_bad_share(source, cache.meta, max_bad_share)
        return cache

    with building(cache_root, key) as tmp:
        started = time.perf_counter()
        with byte_progress(f"tokenising {source.name}", size, progress) as advance:
            tally = _tokenise_file(source, tokenizer, tmp, advance, chunk_bytes)
        seconds = time.perf_counter() - started
        meta = {
            "format_version": FORMAT_VERSION, "kind": "pretrain",
            "source": str(source.resolve()), "source_bytes": size, "source_sha256": source_sha,
            "tokenizer": str(Path(tokenizer_path).resolve()), "tokenizer_sha256": tokenizer_sha,
            "vocab_size": vocab_size, "dtype": np.dtype(TOKEN_DTYPE).name,
            "num_lines": tally.lines, "blank_lines": tally.blank, "num_docs": tally.docs, "num_tokens": tally.tokens,
            "bad_line_count": tally.bad_count, "bad_lines": tally.bad_lines,
            "bad_reasons": dict(sorted(tally.bad_reasons.items())),
            "seconds": round(seconds, 3), "mb_per_s": round(size / 1e6 / max(seconds, 1e-9), 2),
        }
        # Checked before publishing: a failed prepare leaves no cache behind to train on.
        _check_bad_share(source, meta, max_bad_share)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    cache = TokenCache(final)
    if cache.meta["bad_line_count"] and progress:
        from rich.console import Console
        Console(stderr=True).print(
            f"{source}: skipped {cache.meta['bad_line_count']} malformed lines: "
            f"{', '.join(map(str, cache.bad_lines[:REPORTED_BAD_LINES]))}")
    return cache
