"""Pure statistics over token sequences and scores (numpy only, no model)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def seq_rep_n(tokens: Sequence[int], n: int = 4) -> float | None:
    """1 - unique n-grams / all n-grams of one sequence; None if it has no n-gram."""
    grams = ngrams(list(tokens), n)
    if not grams:
        return None
    return 1.0 - len(set(grams)) / len(grams)


def repetition_rate(sequences: Sequence[Sequence[int]], n: int = 4) -> float | None:
    """seq-rep-n averaged over the sequences that have at least one n-gram."""
    values = [v for v in (seq_rep_n(s, n) for s in sequences) if v is not None]
    return float(np.mean(values)) if values else None


def distinct_n(sequences: Sequence[Sequence[int]], n: int = 2) -> float | None:
    """Unique n-grams / all n-grams, pooled over all sequences."""
    grams = [g for s in sequences for g in ngrams(list(s), n)]
    return len(set(grams)) / len(grams) if grams else None


def rank_of_answer(scores: Sequence[float], answer_index: int = 0) -> int:
    """1-based rank of the answer; ties count against it (a constant model is not lucky)."""
    target = scores[answer_index]
    return 1 + sum(1 for i, s in enumerate(scores) if i != answer_index and s >= target)


def bootstrap_ci(values: Sequence[float], seed: int = 0, rounds: int = 1000) -> list[float] | None:
    """Percentile 95% interval of the mean, from `rounds` seeded resamples."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(rounds, data.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return [float(low), float(high)]
