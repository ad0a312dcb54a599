"""Tiny models for the model tests: a base config and a one-thread fixture."""

from __future__ import annotations

import pytest
import torch

from models.model import MiniMindLM, ModelConfig

TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, max_seq_len=128,
            knowledge_num=256, knowledge_length=8, knowledge_dim=32, num_candidates=8)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine extra threads only wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_tiny(base: dict, **overrides) -> MiniMindLM:
    torch.manual_seed(0)
    return MiniMindLM(ModelConfig(**{**base, **overrides}))
