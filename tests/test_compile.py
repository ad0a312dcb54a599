"""launch.compile: the compiled training forward gives the eager losses and gradients on
a tiny memory model (CPU, a cheap backend), and batches are padded to fixed lengths so a
compiled model sees few shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_helpers import TINY, build_tiny, one_thread  # noqa: F401 (autouse fixture)
from training.data import collate
from training.loop import COMPILE_PAD_MULTIPLE, compiled
from training.measures import masked_ce


def _step(forward, model, inputs, targets, mask):
    model.zero_grad(set_to_none=True)
    out = forward(inputs)
    loss = masked_ce(out.logits, targets, mask) + (out.aux_loss if out.aux_loss is not None else 0.0)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backend", ["aot_eager"])
def test_compiled_and_eager_losses_agree_on_a_memory_model(backend):
    model = build_tiny(TINY, preset="memory", dim=32, knowledge_dim=16, knowledge_num=64, n_heads=2, n_kv_heads=1)
    model.train()
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, 300, size=n) for n in (40, 23, 31)]
    inputs, targets, mask = collate(docs, 96, COMPILE_PAD_MULTIPLE)
    assert inputs.shape == (3, 64)  # padded up to the bucket, not to the longest document
    eager_loss, eager_grads = _step(model, model, inputs, targets, mask)
    fast = compiled(model, backend)
    loss, grads = _step(fast, model, inputs, targets, mask)
    assert loss == pytest.approx(eager_loss, abs=1e-5)
    assert grads.keys() == eager_grads.keys()
    for name in grads:
        assert torch.allclose(grads[name], eager_grads[name], atol=1e-5), name


def test_bucketing_keeps_the_loss_and_caps_at_max_seq_len():
    rng = np.random.default_rng(1)
    docs = [rng.integers(3, 300, size=n) for n in (70, 12)]
    plain = collate(docs, 96)
    padded = collate(docs, 96, COMPILE_PAD_MULTIPLE)
    assert plain[0].shape == (2, 69) and padded[0].shape == (2, 96)  # 69 -> 128, capped at 96
    assert padded[2].sum() == plain[2].sum()                        # padding is masked out
    assert torch.equal(padded[0][:, :69], plain[0])
