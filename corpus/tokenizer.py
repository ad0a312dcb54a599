"""The ByteLevel BPE tokenizer: train it, load it (ours or MiniMind's), encode and decode.

Layout matches MiniMind's tokenizer.json: byte-level pre-tokenizer without a prefix
space, byte-level decoder, no normaliser (so decode(encode(text)) == text), and three
special tokens at ids 0, 1, 2. `<unk>` (0) doubles as padding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from minimind.errors import MinimindError

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
# MiniMind2's own tokenizer names its ids 0, 1, 2 differently; both are accepted.
ACCEPTED_SPECIALS = (SPECIAL_TOKENS, ("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
DEFAULT_VOCAB_SIZE = 6400


def _empty_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_tokenizer(texts_iter: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train a ByteLevel BPE of `vocab_size` tokens on the texts, in the order given.

    The trainer is deterministic for a given input (tests/test_data_build.py checks it);
    callers pass texts in a stable order."""
    tokenizer = _empty_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts_iter, trainer=trainer)
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer.json; a clear error when it is missing, unreadable or has no
    special tokens at ids 0, 1, 2."""
    path = Path(path)
    if not path.is_file():
        raise MinimindError(f"{path}: tokenizer file not found")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust side raises bare Exception for any parse error
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise MinimindError(f"{path}: not a valid tokenizer.json ({message})") from err
    found = tuple(tokenizer.id_to_token(i) for i in (PAD_ID, BOS_ID, EOS_ID))
    if found not in ACCEPTED_SPECIALS:
        raise MinimindError(f"{path}: ids 0, 1, 2 must be the special tokens <unk>, <s>, </s>; found {found}")
    return tokenizer


def encode(tok: Tokenizer, text: str) -> list[int]:
    """Token ids of `text`, without <s> and </s>."""
    return tok.encode(text, add_special_tokens=False).ids


def decode(tok: Tokenizer, ids: Iterable[int], skip_special: bool = True) -> str:
    """Text of `ids`; padding and <s>/</s> are dropped unless `skip_special=False`."""
    return tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)
