"""Training and validation samples from the prepared token cache.

Documents (each `<s> text </s>` in the cache) are split once into train and validation
by a hash of (document index, seed): a document is never in both, and the split does
not depend on the number of processes or on data order.

Samples are whole documents truncated to `max_seq_len + 1` tokens (inputs and shifted
targets). A batch is right-padded with id 0 (`<unk>`, the pad) to its longest sample and
the padding is masked out of the loss. Padding rather than packing keeps one document
per row, as the lab's MiniMind trainer does, so the memory layer's query never mixes
two documents; padding to the batch's longest (not to max_seq_len) keeps the waste small.

Order: every epoch a fresh permutation from (seed, epoch); each process takes an equal
strided share, so all processes run the same number of steps. The micro-batch stream
runs across epochs, so the data position is a pure function of the optimizer step and
resume needs no state beyond the step.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


def split_documents(num_docs: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices), deterministic in (num_docs, val_fraction, seed)."""
    idx = np.arange(num_docs, dtype=np.uint64)
    # splitmix64 of (index + seed): a fast stable hash, identical on every machine.
    with np.errstate(over="ignore"):
        z = idx + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    unit = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    is_val = unit < val_fraction
    if num_docs >= 2 and not is_val.any():
        is_val[int(np.argmin(unit))] = True  # always at least one held-out document
    if num_docs >= 2 and is_val.all():
        is_val[int(np.argmax(unit))] = False
    all_idx = np.arange(num_docs, dtype=np.int64)
    return all_idx[~is_val], all_idx[is_val]


def split_digest(train_idx: np.ndarray, val_idx: np.ndarray) -> str:
    """Short fingerprint of a split, recorded in checkpoints to catch a changed dataset."""
    h = hashlib.sha256(np.asarray(train_idx, np.int64).tobytes())
    h.update(np.asarray(val_idx, np.int64).tobytes())
    return h.hexdigest()[:16]


@dataclass
class Stream:
    """The micro-batch schedule of one process (see the module docstring)."""

    train_idx: np.ndarray
    batch_size: int
    seed: int
    rank: int
    world: int

    def __post_init__(self) -> None:
        self.per_rank = len(self.train_idx) // self.world
        if self.per_rank == 0:
            raise ValueError(f"{len(self.train_idx)} training documents cannot feed {self.world} processes")
        self.batches_per_epoch = -(-self.per_rank // self.batch_size)
        self._epoch, self._order = -1, np.empty(0, np.int64)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.train_idx))
            mine = perm[self.rank::self.world][: self.per_rank]
            self._epoch, self._order = epoch, self.train_idx[mine]
        return self._order

    def batch(self, micro_index: int) -> tuple[int, np.ndarray]:
        """(epoch, document indices) of the global micro-batch number `micro_index`."""
        epoch, b = divmod(micro_index, self.batches_per_epoch)
        order = self._epoch_order(epoch)
        return epoch, order[b * self.batch_size:(b + 1) * self.batch_size]


def total_steps(batches_per_epoch: int, epochs: int, accumulation_steps: int, max_steps: int) -> int:
    steps = max(1, -(-(batches_per_epoch * epochs) // accumulation_steps))
    return min(steps, max_steps) if max_steps > 0 else steps


def sample_tokens(doc, max_seq_len: int) -> np.ndarray:
    return np.asarray(_tokens_of(doc)[: max_seq_len + 1], dtype=np.int64)


def untrained_tokens(lengths: np.ndarray, max_seq_len: int) -> tuple[int, int]:
    """(documents longer than a sample, their tokens past it): what `sample_tokens` cuts off and
    no step ever trains on. `lengths` are the documents' token counts, <s> and </s> included."""
    over = np.asarray(lengths, dtype=np.int64) - (max_seq_len + 1)
    return int((over > 0).sum()), int(over[over > 0].sum())


def _tokens_of(doc):
    """A document is a token array (pretraining) or (tokens, target flags) (a conversation)."""
    return doc[0] if isinstance(doc, tuple) else doc


def input_tokens(docs: Sequence, max_seq_len: int) -> int:
    """The input positions `collate` fills with real tokens (padding left out): what a step
    processes, prompt tokens of a conversation included. Throughput (tokens/s, which the
    compute estimate calibrates against) counts these, not the loss-carrying ones, so an SFT
    run's speed means the same as a pretraining run's. A host-side int: no device sync."""
    return sum(max(0, min(len(_tokens_of(d)), max_seq_len + 1) - 1) for d in docs)


def collate(docs: Sequence, max_seq_len: int, pad_multiple: int = 0):
    """(input_ids, targets, loss_mask) LongTensors/FloatTensor, padded to the longest doc,
    or with `pad_multiple` up to a multiple of it (at most max_seq_len): a compiled model
    then sees a few fixed lengths instead of a new shape nearly every step.

    A pretraining document is learned everywhere; a conversation (tokens, flags) only where
    the predicted token is flagged (the assistant's replies, corpus/sft.py)."""
    import torch

    samples = [sample_tokens(d, max_seq_len) for d in docs]
    width = max(2, max(len(s) for s in samples))
    if pad_multiple:  # width counts the shifted target too: inputs are width - 1 long
        width = min(max_seq_len, -(-(width - 1) // pad_multiple) * pad_multiple) + 1
    tokens = np.full((len(samples), width), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(samples), width - 1), dtype=np.float32)
    for row, (doc, sample) in enumerate(zip(docs, samples)):
        tokens[row, : len(sample)] = sample
        if isinstance(doc, tuple):  # position j predicts token j + 1: the target's flag decides
            mask[row, : max(0, len(sample) - 1)] = doc[1][1: len(sample)]
        else:
            mask[row, : max(0, len(sample) - 1)] = 1.0
    tokens_t = torch.from_numpy(tokens)
    return tokens_t[:, :-1].contiguous(), tokens_t[:, 1:].contiguous(), torch.from_numpy(mask)


@dataclass
class Corpus:
    """What a run trains on, pretraining documents or SFT conversations alike: a token cache
    and the indices of its training and validation documents."""
    cache: Any                  # corpus.prepare.TokenCache (or the SFT conversation cache)
    train_idx: np.ndarray
    val_idx: np.ndarray

    @property
    def bad_lines(self) -> int:
        return int(getattr(self.cache, "meta", {}).get("bad_line_count", 0))

    def docs(self, indices) -> list[np.ndarray]:
        return [self.cache.doc(int(i)) for i in indices]
