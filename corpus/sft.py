"""`minimind data prepare --sft F.jsonl`: conversations into a token cache with a loss mask.

Input: MiniMind's SFT format (`sft_mini_512.jsonl`), one JSON object per line:
    {"conversations": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
Each conversation is rendered with a chat template, MiniMind2's by default:
    <s>system\\n...</s>\\n<s>user\\n...</s>\\n<s>assistant\\n...</s>\\n
or the `chat_template` (Jinja) of a tokenizer_config.json, rendered in a sandbox as Hugging
Face does. Loss is on assistant tokens only: for each assistant turn i the span between
render(turns[:i], add_generation_prompt=True) and render(turns[:i + 1]) is a target, which
for MiniMind2's template is the reply and its `</s>\\n`. Spans are cut from the rendered text
and encoded one by one, so a span boundary is a token boundary whatever the tokenizer.
`<s>`, `</s>` and `<unk>` in the rendered text become their ids directly.

The cache is the pretraining cache's layout (tokens.bin, offsets.bin, meta.json) plus
targets.bin: one uint8 per token, 1 where the token is an assistant token the model is
trained to predict. Streaming, content-keyed (file, tokenizer, template, format version),
malformed lines reported by number, blank lines skipped and counted apart, too many bad
lines fail with nothing published: as corpus/prepare.py, whose machinery this reuses.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from corpus.cache import building, content_key, file_sha256
from corpus.fastencode import batch_encoder
from corpus.prepare import (CHUNK_BYTES, OFFSET_DTYPE, REPORTED_BAD_LINES, TOKEN_DTYPE, TokenCache, _check_bad_share,
                            _Tally)
from corpus.progress import byte_progress
from corpus.tokenizer import BOS_ID, EOS_ID, PAD_ID, load_tokenizer
from minimind.errors import MinimindError

SFT_FORMAT_VERSION = 1
ROLES = ("system", "user", "assistant")
SPECIALS = {"<unk>": PAD_ID, "<s>": BOS_ID, "</s>": EOS_ID}
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in SPECIALS) + ")")
MINIMIND2 = "minimind2"  # the name the default template is recorded under

Render = Callable[[list[dict], bool], str]


def render_minimind2(messages: list[dict], add_generation_prompt: bool) -> str:
    """MiniMind2's chat template: `<s>{role}\\n{content}</s>\\n` per turn, `<s>assistant\\n` to generate."""
    text = "".join(f"<s>{m['role']}\n{m['content']}</s>\n" for m in messages)
    return text + ("<s>assistant\n" if add_generation_prompt else "")


def load_template(tokenizer_config: Optional[str | Path]) -> tuple[Render, str]:
    """(render function, template source for the cache key) from a tokenizer_config.json, or MiniMind2's."""
    if tokenizer_config is None:
        return render_minimind2, MINIMIND2
    path = Path(tokenizer_config)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MinimindError(f"{path}: not a readable tokenizer_config.json ({error})") from None
    source = config.get("chat_template") if isinstance(config, dict) else None
    if not isinstance(source, str) or not source.strip():
        raise MinimindError(f"{path}: no chat_template string")
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        template = env.from_string(source)
    except TemplateError as error:
        raise MinimindError(f"{path}: chat_template does not parse ({error})") from None
    specials = {k: config.get(k) if isinstance(config.get(k), str) else v
                for k, v in (("bos_token", "<s>"), ("eos_token", "</s>"))}

    def render(messages: list[dict], add_generation_prompt: bool) -> str:
        return template.render(messages=messages, add_generation_prompt=add_generation_prompt, **specials)

    return render, source


def conversation(obj: Any) -> tuple[Optional[list[dict]], str]:
    """(turns, '') for a valid SFT line, else (None, reason)."""
    turns = obj.get("conversations") if isinstance(obj, dict) else None
    if not isinstance(turns, list) or not turns:
        return None, "no \"conversations\" list"
    clean = []
    for turn in turns:
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            return None, "a turn without role system/user/assistant and string content"
        clean.append({"role": turn["role"], "content": turn["content"]})
    if not any(t["role"] == "assistant" and t["content"].strip() for t in clean):
        return None, "no assistant reply"
    return clean, ""


def segments(render: Render, turns: list[dict]) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_target) spans; targets are the assistant replies."""
    full = render(turns, False)
    out, pos = [], 0
    for i, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        prompt, upto = render(turns[:i], True), render(turns[: i + 1], False)
        if not (full.startswith(upto) and upto.startswith(prompt) and len(prompt) >= pos):
            raise MinimindError("the chat template does not render a conversation as a prefix of its continuation; "
                                "assistant tokens cannot be located")
        out += [(full[pos:len(prompt)], False), (full[len(prompt):len(upto)], True)]
        pos = len(upto)
    out.append((full[pos:], False))
    return [(text, target) for text, target in out if text]


def split_specials(text: str) -> list[str]:
    return [part for part in _SPECIAL_RE.split(text) if part]


def encode_chat(tokenizer, render: Render, messages: list[dict]) -> list[int]:
    """Token ids of `messages` followed by the generation prompt (`<s>assistant\n` for MiniMind2)."""
    ids: list[int] = []
    for part in split_specials(render(messages, True)):
        ids += [SPECIALS[part]] if part in SPECIALS else tokenizer.encode(part, add_special_tokens=False).ids
    return ids


def encode_conversations(encode, render: Render, convs: list[list[dict]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(token ids, target flags) per conversation; plain text of the whole batch is encoded in one call."""
    plan = []  # per conversation: [(piece, is_target)], piece a special's name or text
    texts: list[str] = []
    for turns in convs:
        pieces = []
        for text, target in segments(render, turns):
            for part in split_specials(text):
                pieces.append((part, target))
                if part not in SPECIALS:
                    texts.append(part)
        plan.append(pieces)
    flat, lengths = encode(texts) if texts else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    ends = np.cumsum(lengths)
    out, k = [], 0
    for pieces in plan:
        ids, flags = [], []
        for part, target in pieces:
            if part in SPECIALS:
                ids.append(np.array([SPECIALS[part]], dtype=TOKEN_DTYPE))
                flags.append(np.array([target], dtype=np.uint8))
            else:
                chunk = flat[int(ends[k] - lengths[k]):int(ends[k])]
                k += 1
                ids.append(chunk.astype(TOKEN_DTYPE))
                flags.append(np.full(len(chunk), target, dtype=np.uint8))
        out.append((np.concatenate(ids), np.concatenate(flags)))
    return out


class SftCache(TokenCache):
    """A prepared conversation cache: doc(i) is (token ids, target flags)."""

    def __init__(self, path: str | Path):
        super().__init__(path)
        try:
            self.targets = (np.memmap(self.path / "targets.bin", dtype=np.uint8, mode="r") if len(self.tokens)
                            else np.zeros(0, dtype=np.uint8))
        except (OSError, ValueError) as err:
            raise MinimindError(f"{self.path}: not a readable conversation cache ({err})") from err
        if len(self.targets) != len(self.tokens):
            raise MinimindError(f"{self.path}: targets.bin does not match tokens.bin")

    def doc(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        tokens = super().doc(i)
        start = int(self.offsets[i])
        return tokens, self.targets[start:start + len(tokens)]


def _tokenise(path: Path, tokenizer, render: Render, out_dir: Path, advance, chunk_bytes: int) -> _Tally:
    tally = _Tally()
    encode = batch_encoder(tokenizer, dtype=np.int64)
    with open(path, "rb") as source, open(out_dir / "tokens.bin", "wb") as tokens_out, \
            open(out_dir / "targets.bin", "wb") as targets_out, open(out_dir / "offsets.bin", "wb") as offsets_out:
        offsets_out.write(np.zeros(1, dtype=OFFSET_DTYPE).tobytes())

        def flush(lines: list[bytes]) -> None:
            convs = []
            for raw in lines:
                tally.lines += 1
                if not raw.strip():
                    tally.blank += 1
                    continue
                try:
                    obj = json.loads(raw)
                except ValueError:
                    tally.bad(tally.lines, "invalid JSON")
                    continue
                turns, reason = conversation(obj)
                if turns is None:
                    tally.bad(tally.lines, reason)
                else:
                    convs.append(turns)
            for ids, flags in encode_conversations(encode, render, convs):
                tokens_out.write(ids.tobytes())
                targets_out.write(flags.tobytes())
                tally.tokens += len(ids)
                tally.docs += 1
                offsets_out.write(np.array([tally.tokens], dtype=OFFSET_DTYPE).tobytes())

        pending = b""
        while chunk := source.read(chunk_bytes):
            advance(len(chunk))
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            flush(lines)
        if pending:
            flush([pending])
    return tally


def _cache_key(source: Path, tokenizer_path: str | Path, tokenizer_config: Optional[str | Path]) -> str:
    _, template_source = load_template(tokenizer_config)
    return content_key("sft", str(SFT_FORMAT_VERSION), file_sha256(source), file_sha256(tokenizer_path),
                       content_key(template_source))


def find_sft_cache(jsonl_path: str | Path, tokenizer_path: str | Path, cache_root: str | Path,
                   tokenizer_config: Optional[str | Path] = None) -> Optional[SftCache]:
    """The prepared cache of this file, tokenizer and template, or None (nothing is built)."""
    final = Path(cache_root) / _cache_key(Path(jsonl_path), tokenizer_path, tokenizer_config)
    return SftCache(final) if (final / "meta.json").is_file() else None


def sample_conversations(jsonl_path: str | Path, tokenizer_path: str | Path, tokenizer_config: Optional[str | Path] = None,
                         max_bytes: int = 16 << 20) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """(token ids, target flags) of the valid conversations in the first `max_bytes` of the
    file, tokenised as prepare_sft tokenises them, in memory (nothing is written), and the
    share of the file's bytes they come from (1.0: the whole file, so the list is what the
    cache would hold, in its order)."""
    source = Path(jsonl_path)
    size = source.stat().st_size
    render, _ = load_template(tokenizer_config)
    encode = batch_encoder(load_tokenizer(tokenizer_path), dtype=np.int64)
    with open(source, "rb") as handle:
        data = handle.read(max_bytes + 1)
    whole = len(data) <= max_bytes
    lines = data.split(b"\n")
    if not whole:
        lines.pop()  # a line cut by the sample's end
    read = sum(len(line) + 1 for line in lines)
    convs = []
    for raw in lines:
        if not raw.strip():
            continue
        try:
            turns, _ = conversation(json.loads(raw))
        except ValueError:
            continue
        if turns is not None:
            convs.append(turns)
    return encode_conversations(encode, render, convs), 1.0 if whole else min(1.0, read / max(size, 1))


def prepare_sft(jsonl_path: str | Path, tokenizer_path: str | Path, cache_root: str | Path,
                tokenizer_config: Optional[str | Path] = None, max_bad_share: float = 0.01, progress: bool = True,
                chunk_bytes: int = CHUNK_BYTES) -> SftCache:
    """Tokenise a conversation JSONL into `cache_root/<key>/` (or reuse it) and return the cache."""
    source = Path(jsonl_path)
    if not source.is_file():
        raise MinimindError(f"{source}: conversation file not found")
    render, template_source = load_template(tokenizer_config)
    tokenizer = load_tokenizer(tokenizer_path)
    size = source.stat().st_size
    with byte_progress(f"hashing {source.name}", size, progress) as advance:
        source_sha = file_sha256(source, advance)
    tokenizer_sha = file_sha256(tokenizer_path)
    template_sha = content_key(template_source)
    key = content_key("sft", str(SFT_FORMAT_VERSION), source_sha, tokenizer_sha, template_sha)
    final = Path(cache_root) / key
    if (final / "meta.json").is_file():
        cache = SftCache(final)
        _check_bad_share(source, cache.meta, max_bad_share)
        return cache
    with building(cache_root, key) as tmp:
        started = time.perf_counter()
        with byte_progress(f"tokenising {source.name}", size, progress) as advance:
            tally = _tokenise(source, tokenizer, render, tmp, advance, chunk_bytes)
        seconds = time.perf_counter() - started
        targets = np.memmap(tmp / "targets.bin", dtype=np.uint8, mode="r") if tally.tokens else np.zeros(0, np.uint8)
        meta = {
            "format_version": SFT_FORMAT_VERSION, "kind": "sft",
            "source": str(source.resolve()), "source_bytes": size, "source_sha256": source_sha,
            "tokenizer": str(Path(tokenizer_path).resolve()), "tokenizer_sha256": tokenizer_sha,
            "chat_template": MINIMIND2 if tokenizer_config is None else str(Path(tokenizer_config).resolve()),
            "vocab_size": tokenizer.get_vocab_size(), "dtype": np.dtype(TOKEN_DTYPE).name,
            "num_lines": tally.lines, "blank_lines": tally.blank, "num_docs": tally.docs,
            "num_tokens": tally.tokens, "target_tokens": int(targets.sum(dtype=np.int64)),
            "bad_line_count": tally.bad_count, "bad_lines": tally.bad_lines,
            "bad_reasons": dict(sorted(tally.bad_reasons.items())),
            "seconds": round(seconds, 3), "mb_per_s": round(size / 1e6 / max(seconds, 1e-9), 2),
        }
        del targets
        _check_bad_share(source, meta, max_bad_share)  # before publishing: no truncated set to train on
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    cache = SftCache(final)
    if cache.meta["bad_line_count"] and progress:
        from rich.console import Console
        Console(stderr=True).print(f"{source}: skipped {cache.meta['bad_line_count']} malformed lines: "
                                   f"{', '.join(map(str, cache.bad_lines[:REPORTED_BAD_LINES]))}")
    return cache
