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


def _micro_batches(rng, lengths):
    docs = [rng.integers(3, 300, size=n) for n in lengths]
    return collate(docs, 96, COMPILE_PAD_MULTIPLE)


def test_compiled_steps_of_one_bucket_compile_once_with_no_graph_break():
    """The trainer's compiled forward over 3 optimizer steps x 2 micro-batches with an EMA
    update at step 2: the memory layer's statistics and EMA store are tensors updated in
    place, so a bucket's shape compiles one graph and later micro-batches reuse it (a Python
    list or int counter there was a guard: a recompile every micro-batch). The compiled run
    ends with the eager run's bank, statistics and weights."""
    from torch._dynamo.utils import counters

    config = dict(TINY, preset="memory", dim=32, knowledge_dim=16, knowledge_num=64, n_heads=2, n_kv_heads=1,
                  ema_update_freq=2, ema_decay=0.0)
    runs = []
    torch._dynamo.reset()
    counters.clear()
    try:
        for backend in (None, "aot_eager"):
            model = build_tiny(config)
            model.train()
            forward = model if backend is None else compiled(model, backend)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            rng = np.random.default_rng(2)
            graphs = []
            for step in range(1, 4):
                for _ in range(2):
                    inputs, targets, mask = _micro_batches(rng, (40, 23, 31))  # one 64-token bucket
                    out = forward(inputs)
                    (masked_ce(out.logits, targets, mask) + out.aux_loss).backward()
                    graphs.append(counters["stats"]["unique_graphs"])
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                model.after_optimizer_step(step)
            runs.append((model.memory_bank.clone(), model.memory_stats(), [p.detach().clone() for p in model.parameters()]))
            if backend is not None:
                assert graphs == [1] * 6, graphs  # compiled once, reused by the 5 micro-batches after
                assert not counters["graph_break"], dict(counters["graph_break"])
                inputs, targets, mask = _micro_batches(rng, (90, 12, 5))  # another bucket: its own graph ...
                forward(inputs)
                inputs, targets, mask = _micro_batches(rng, (50, 30, 8))  # ... and the first one's is still valid
                forward(inputs)
                assert counters["stats"]["unique_graphs"] == 2
    finally:
        torch._dynamo.reset()
    (bank, stats, weights), (compiled_bank, compiled_stats, compiled_weights) = runs
    assert not torch.equal(bank, build_tiny(config).memory_bank)  # the EMA moved entries: the comparison means something
    assert torch.equal(compiled_bank, bank)
    assert compiled_stats.keys() == stats.keys()
    for name in stats:
        assert compiled_stats[name] == pytest.approx(stats[name], rel=1e-5, abs=1e-9), name
    for a, b in zip(compiled_weights, weights):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_short_last_micro_batch_runs_eagerly_instead_of_compiling_again():
    """The last micro-batch of an epoch has fewer rows: the trainer's forward runs it eagerly
    (same loss as eager), so a length bucket keeps one graph."""
    from torch._dynamo.utils import counters

    from training.loop import micro_batch_forward

    config = dict(TINY, preset="memory", dim=32, knowledge_dim=16, knowledge_num=64, n_heads=2, n_kv_heads=1)
    model = build_tiny(config).train()  # as the trainer runs it: gradients on
    rng = np.random.default_rng(3)
    full = _micro_batches(rng, (40, 23, 31))[0]
    short = _micro_batches(rng, (50, 20))[0]  # same 64-token bucket, 2 rows of 3
    torch._dynamo.reset()
    counters.clear()
    try:
        forward = compiled(model, "aot_eager")
        micro_batch_forward(forward, full, 3, compiling=True)
        assert counters["stats"]["unique_graphs"] == 1
        logits = micro_batch_forward(forward, short, 3, compiling=True).logits
        assert counters["stats"]["unique_graphs"] == 1  # no second graph for the short batch
        torch.testing.assert_close(logits, model(short).logits)
        micro_batch_forward(forward, full, 3, compiling=True)  # the full batch's graph still serves
        assert counters["stats"]["unique_graphs"] == 1
    finally:
        torch._dynamo.reset()
