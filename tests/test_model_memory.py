"""The memory layer: gradients, EMA and freezing, statistics, inspection, cost independent of knowledge_num."""

import time

import pytest
import torch
import torch.nn.functional as F

from torch.utils._python_dispatch import TorchDispatchMode

import models.model as model_file
from models.model import MiniMindLM, ModelConfig, WeightedBagSum, bank_dtype, topk_by_groups

from model_helpers import TINY as BASE, build_tiny, one_thread  # noqa: F401 (one_thread is an autouse fixture)

TINY = dict(BASE, preset="memory", knowledge_num=1024)


def tiny(**overrides) -> MiniMindLM:
    return build_tiny(TINY, **overrides)


def train_steps(model, steps, batch=4, seq=32):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    reports = []
    for step in range(1, steps + 1):
        ids = torch.randint(1, model.config.vocab_size, (batch, seq))
        out = model(ids)
        (F.cross_entropy(out.logits.flatten(0, 1), ids.flatten()) + out.aux_loss).backward()
        opt.step()
        opt.zero_grad()
        reports.append(model.after_optimizer_step(step))
    return reports


def test_bank_is_compact_persistent_and_valid():
    model = tiny()
    state = model.state_dict()
    assert state["memory_bank"].dtype == torch.int16 and state["memory_bank"].shape == (1024, 8)
    assert "memory_frozen" in state and "layers.0.memory.usage" not in state  # the stats window is not saved
    assert int(model.memory_bank.min()) >= 1 and int(model.memory_bank.max()) < 300
    assert torch.equal(tiny().memory_bank, model.memory_bank)  # seeded
    assert not torch.equal(tiny(memory_seed=1).memory_bank, model.memory_bank)
    assert bank_dtype(6400) == torch.int16 and bank_dtype(50000) == torch.int32


def test_gradients_reach_sub_keys_query_and_value_projections():
    model = tiny()
    ids = torch.randint(1, 300, (2, 16))
    out = model(ids)
    F.cross_entropy(out.logits.flatten(0, 1), ids.flatten()).backward()
    memory = model.layers[0].memory
    for p in (memory.keys, memory.query.weight, memory.value.weight, memory.gate.weight, memory.up.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_product_keys_equal_a_flat_scan_of_all_keys():
    model = tiny(knowledge_num=4096, num_candidates=8)
    memory = model.layers[0].memory
    query = torch.randn(50, 32)
    scores, entries = memory.lookup(query)
    side = memory.side
    full_keys = torch.cat([memory.keys[0][:, None].expand(side, side, 16), memory.keys[1][None].expand(side, side, 16)], -1)
    flat_scores, flat_entries = (query @ full_keys.reshape(side * side, 32).T).topk(8)
    torch.testing.assert_close(scores, flat_scores)
    assert torch.equal(entries.sort(-1).values, flat_entries.sort(-1).values)


@pytest.mark.parametrize("width, k", [(1024, 16), (2048, 32), (256, 8), (100, 8), (1030, 4)])
def test_topk_by_groups_equals_torch_topk(width, k):
    """Widths that take the grouped path and ones that fall back (too narrow, not divisible by the block)."""
    g = torch.Generator().manual_seed(width + k)
    scores = torch.randn(64, width, generator=g)
    values, indices = topk_by_groups(scores, k)
    reference = scores.topk(k)
    assert torch.equal(values, reference.values) and torch.equal(indices, reference.indices)


def test_topk_by_groups_with_ties_agrees_where_torch_topk_defines_the_order():
    # 20 distinct values in rows of 2048: every row ties, at the k-th place too
    scores = torch.randint(0, 20, (64, 2048), generator=torch.Generator().manual_seed(0)).float()
    values, indices = topk_by_groups(scores, 32)
    reference = scores.topk(32)
    assert torch.equal(values, reference.values)  # best first, as torch.topk sorts them
    assert torch.equal(scores.gather(1, indices), values)  # each index holds its value
    assert all(len(set(row)) == 32 for row in indices.tolist())  # no element twice
    above = values > values[:, -1:]  # strictly better than the k-th: every one of them must be chosen
    for row, ref_row, keep in zip(indices, reference.indices, above):
        assert set(row[keep].tolist()) == set(ref_row[keep].tolist())


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_weighted_bag_sum_equals_embedding_bag_forward_and_backward(dtype, tolerance):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 40, (50, 12), generator=g, dtype=torch.int32)
    weight = torch.rand(50, 12, generator=g, dtype=dtype)
    table = torch.randn(40, 6, generator=g, dtype=dtype)
    grad = torch.randn(50, 6, generator=g, dtype=dtype)
    results = []
    for bag_sum in (WeightedBagSum.apply,
                    lambda i, w, t: F.embedding_bag(i, t, mode="sum", per_sample_weights=w)):
        w, t = weight.clone().requires_grad_(), table.clone().requires_grad_()
        out = bag_sum(ids, w, t)
        out.backward(grad)
        results.append((out, w.grad, t.grad))
    (out, grad_weight, grad_table), (ref_out, ref_grad_weight, ref_grad_table) = results
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(grad_weight, ref_grad_weight, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(grad_table, ref_grad_table, rtol=tolerance, atol=tolerance)


def test_weighted_bag_sum_backward_is_exact_across_chunks(monkeypatch):
    ids = torch.randint(0, 40, (5, 12), dtype=torch.int32)
    weight = torch.rand(5, 12, dtype=torch.double, requires_grad=True)
    table = torch.randn(40, 6, dtype=torch.double, requires_grad=True)
    monkeypatch.setattr(model_file, "bag_chunk_elements", lambda device: 80)  # two rows of (rows, V) per chunk
    assert torch.autograd.gradcheck(lambda w, t: WeightedBagSum.apply(ids, w, t), (weight, table))


def test_weighted_bag_sum_accumulates_a_bf16_table_gradient_in_fp32(monkeypatch):
    monkeypatch.setattr(model_file, "bag_chunk_elements", lambda device: 4 * 64)  # 64 chunks of 64 rows
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 4, (4096, 8), generator=g, dtype=torch.int32)  # every row of the table read 8192 times
    weight = torch.rand(4096, 8, generator=g).bfloat16()
    grad = torch.randn(4096, 16, generator=g).bfloat16()
    table = torch.randn(4, 16, generator=g).bfloat16().requires_grad_()
    WeightedBagSum.apply(ids, weight, table).backward(grad)
    exact = table.detach().double().requires_grad_()
    F.embedding_bag(ids, exact, mode="sum", per_sample_weights=weight.double()).backward(grad.double())
    assert table.grad.dtype == torch.bfloat16
    # one bf16 rounding of the result; summing the 64 chunks in bf16 was 4x that here
    assert (table.grad.double() - exact.grad).abs().max() <= 2**-8 * exact.grad.abs().max()


def test_read_is_the_weighted_mean_of_entry_embeddings_ignoring_padding():
    model = tiny()
    memory = model.layers[0].memory
    model.set_memory_entry(3, [5, 6])
    model.set_memory_entry(7, [9, 10, 11, 12])
    weights = torch.tensor([[0.25, 0.75]])
    read = memory.read(torch.tensor([[3, 7]]), weights, model.memory_bank, model.tok_embeddings.weight)
    table = memory.value(model.tok_embeddings.weight)
    expected = 0.25 * table[[5, 6]].mean(0) + 0.75 * table[[9, 10, 11, 12]].mean(0)
    torch.testing.assert_close(read[0], expected)


def test_frozen_entries_never_change_and_updated_ones_stay_valid_tokens():
    model = tiny(ema_decay=0.0, ema_update_freq=2, freeze_ratio=0.5, knowledge_num=256)
    before = model.memory_bank.clone()
    frozen = model.memory_frozen.clone()
    assert int(frozen.sum()) == 128
    reports = train_steps(model, 12)
    assert reports[0] == {} and reports[1]["updated"] > 0  # every 2nd step
    after = model.memory_bank
    assert torch.equal(after[frozen], before[frozen])  # bit-identical
    changed = (after != before).any(-1)
    assert changed[~frozen].sum() > 0 and not changed[frozen].any()
    assert int(after.min()) >= 0 and int(after.max()) < 300 and after.dtype == torch.int16
    assert model.memory_stats()["updated"] > 0


def test_ema_keeps_padding_where_it_was():
    model = tiny(ema_decay=0.0, ema_update_freq=1, freeze_ratio=0.0, knowledge_num=64)
    for i in range(64):
        model.set_memory_entry(i, list(range(10 + i % 5, 13 + i % 5)))  # 3 tokens, 5 padding
    train_steps(model, 3)
    assert (model.memory_bank[:, 3:] == 0).all() and (model.memory_bank[:, :3] != 0).all()


def test_importance_freezing_and_bank_loading():
    model = tiny(freeze_policy="importance", freeze_ratio=0.25, knowledge_num=256)
    bank = torch.randint(0, 300, (256, 8))
    importance = torch.arange(256, dtype=torch.float32)
    model.load_memory_bank(bank.numpy().astype("uint16"), importance)
    assert torch.equal(model.memory_bank.long(), bank)
    assert torch.equal(model.memory_frozen.nonzero().squeeze(1), torch.arange(192, 256))
    with pytest.raises(ValueError, match="importance"):
        model.load_memory_bank(bank)
    with pytest.raises(ValueError, match="shape"):
        model.load_memory_bank(bank[:10])
    with pytest.raises(ValueError, match=r"\[0, 300\)"):
        model.load_memory_bank(bank + 300, importance)


def test_memory_stats_window_and_keys():
    model = tiny().eval()
    assert "candidate_entropy" not in model.memory_stats()
    with torch.no_grad():
        model(torch.randint(1, 300, (2, 16)))
    stats = model.memory_stats(reset=False)
    for key in ("candidate_entropy", "coverage", "kl_uniform", "hot", "dead", "frozen", "frozen_ratio", "updated",
                "l0/candidate_entropy", "l1/coverage"):
        assert key in stats, key
    assert 0 < stats["candidate_entropy"] <= torch.log(torch.tensor(8.0)).item() + 1e-6  # at most ln(num_candidates)
    assert "selection_entropy" not in stats  # 16 positions: no full selection window
    assert 0 < stats["coverage"] <= 1 and stats["frozen_ratio"] == pytest.approx(0.2, abs=0.01)
    assert stats["dead"] == pytest.approx(1024 * (1 - stats["coverage"]))
    assert model.memory_stats()["candidate_entropy"] == stats["candidate_entropy"]  # reset=True reports, then clears
    assert "candidate_entropy" not in model.memory_stats() and model.memory_stats()["coverage"] == 0
    assert MiniMindLM(ModelConfig(**{**TINY, "preset": "original"})).memory_stats() == {}


def _chosen(model, ids):
    """Each memory layer's best entry per position, (B, T), read without counting."""
    layers = [layer for _, layer in model.memory_layers()]
    for layer in layers:
        layer.capture = []
    with torch.no_grad():
        model(ids)
    chosen = [layer.capture[0][0][:, 0].view(ids.shape) for layer in layers]
    for layer in layers:
        layer.capture = None
    return chosen


def _window_reference(chosen, ids, window):
    """Entropy and distinct share of the entries chosen in each full, padding-free window, by counting."""
    import collections
    import math

    entropies, shares = [], []
    for row, tokens in zip(chosen.tolist(), ids.tolist()):
        for start in range(0, len(row) - window + 1, window):
            if 0 in tokens[start:start + window]:
                continue
            counts = collections.Counter(row[start:start + window]).values()
            entropies.append(-sum(c / window * math.log(c / window) for c in counts))
            shares.append(len(counts) / window)
    return sum(entropies) / len(entropies), sum(shares) / len(shares)


def test_selection_entropy_counts_the_chosen_entries_of_full_windows():
    W = model_file.SELECTION_WINDOW
    model = tiny(max_seq_len=2 * W + 5).eval()
    ids = torch.randint(1, 300, (3, 2 * W + 5))
    ids[1, W + 3:] = 0  # padding: row 1's second window does not count
    chosen = _chosen(model, ids)
    with torch.no_grad():
        model(ids)
    stats = model.memory_stats()
    per_layer = [_window_reference(c, ids, W) for c in chosen]
    for i, (entropy, share) in enumerate(per_layer):
        assert stats[f"l{i}/selection_entropy"] == pytest.approx(entropy, abs=1e-5)
        assert stats[f"l{i}/selection_distinct"] == pytest.approx(share, abs=1e-6)
    # the guardrail's value is the worst layer's, not the mean
    assert stats["selection_entropy"] == pytest.approx(min(e for e, _ in per_layer), abs=1e-5)
    assert stats["selection_distinct"] == pytest.approx(min(s for _, s in per_layer), abs=1e-6)


def test_selection_entropy_is_summed_over_calls_and_ignores_decoding():
    model = tiny().eval()
    W = model_file.SELECTION_WINDOW
    a, b = torch.randint(1, 300, (1, W)), torch.randint(1, 300, (1, W))
    (ca,), (cb,) = _chosen(model, a)[:1], _chosen(model, b)[:1]
    with torch.no_grad():
        model(a)
        model(b)
        model.generate(a[:, :8], max_new_tokens=4)  # prompts and cached steps are shorter than a window
    expected = (_window_reference(ca, a, W)[0] + _window_reference(cb, b, W)[0]) / 2
    assert model.memory_stats()["l0/selection_entropy"] == pytest.approx(expected, abs=1e-5)


def _layer_guardrail(model, h_attn):
    """Run the model's first memory layer on attention outputs h_attn; the guardrail's reading."""
    from minimind.guardrails import level
    from minimind.settings import GuardrailsConfig

    _, layer = model.memory_layers()[0]
    with torch.no_grad():
        layer(h_attn, model.memory_bank, model.tok_embeddings.weight)
    stats = layer.stats(reset=True)
    rule = GuardrailsConfig().memory_entropy
    return stats, level(stats["selection_entropy"], rule), level(stats["candidate_entropy"], rule)


def test_forced_fixation_reads_danger_where_the_candidate_entropy_looked_safe():
    model = tiny(knowledge_num=1024, num_candidates=32).eval()
    W = model_file.SELECTION_WINDOW
    _, layer = model.memory_layers()[0]
    with torch.no_grad():  # every query on one line: positions can only choose the few entries it points at
        direction, reader = torch.randn(layer.query.out_features, 1), torch.randn(1, layer.query.in_features)
        layer.query.weight.copy_(0.01 * direction @ reader)
    stats, selection, candidates = _layer_guardrail(model, torch.randn(4, W, model.config.dim))
    assert stats["selection_entropy"] < 1.0 and stats["selection_distinct"] < 0.1
    assert selection == "danger"
    assert candidates == "safe"  # the old measure: near ln 32 whatever is chosen, blind to the fixation

    healthy = tiny(knowledge_num=1024, num_candidates=32).eval()  # the same layer reading spread attention outputs
    stats, selection, _ = _layer_guardrail(healthy, torch.randn(4, W, healthy.config.dim))
    assert stats["selection_entropy"] > 3.0 and selection == "safe"


def test_inspect_memory_decodes_to_the_text_of_an_entry_we_set():
    vocab = "abcdefghijklmnopqrstuvwxyz ."
    decode = lambda ids: "".join(vocab[i - 1] for i in ids)  # id 0 is padding
    encode = lambda text: [vocab.index(c) + 1 for c in text]
    model = tiny().eval()
    prompt = torch.tensor(encode("the capital of"))
    first = model.inspect_memory(prompt, top=3)
    assert len(first) == len(prompt) and len(first[0]) == 2 and len(first[0][0]) == 3
    entry, weight = first[-1][0][0]
    assert 0 < weight <= 1
    model.set_memory_entry(entry, encode("paris."))
    again = model.inspect_memory(prompt, top=3)
    assert again[-1][0][0][0] == entry  # the text of an entry does not move its key
    assert decode(model.memory_entry(again[-1][0][0][0])) == "paris."
    assert "candidate_entropy" not in model.memory_stats()  # inspection is not counted as traffic
    with pytest.raises(ValueError, match="knowledge_length"):
        model.set_memory_entry(0, list(range(1, 20)))


def test_no_per_step_cost_proportional_to_knowledge_num():
    """A step with 4,194,304 entries costs about what one with 65,536 does (sqrt(N) keys, no N-sized work)."""
    def step_time(knowledge_num):
        model = tiny(knowledge_num=knowledge_num, knowledge_length=4, n_layers=1, ema_update_freq=1)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        ids = torch.randint(1, 300, (4, 32))
        times = []
        for step in range(1, 8):
            start = time.perf_counter()
            out = model(ids)
            F.cross_entropy(out.logits.flatten(0, 1), ids.flatten()).backward()
            opt.step()
            opt.zero_grad()
            model.after_optimizer_step(step)
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    small, large = step_time(65_536), step_time(4_194_304)
    # sub-keys grow 8x (256 -> 2048 per half); an O(N) pass over 4M entries would cost far more
    assert large < 4 * small + 0.02, (small, large)


class LargestAllocation(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = torch.utils._pytree.tree_leaves
        inputs = {t.untyped_storage().data_ptr() for t in leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in leaves(out):  # new storages only: in-place ops and views return their input's
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


def test_no_tensor_of_knowledge_num_size_is_made_per_step():
    knowledge_num = 4_194_304
    model = tiny(knowledge_num=knowledge_num, knowledge_length=4, n_layers=1, ema_update_freq=1)
    ids = torch.randint(1, 300, (4, 32))
    with LargestAllocation() as tracker:
        out = model(ids)
        F.cross_entropy(out.logits.flatten(0, 1), ids.flatten()).backward()
        assert model.after_optimizer_step(1)["updated"] > 0
    assert tracker.largest < knowledge_num  # bytes: even a bool per entry would reach it
    with LargestAllocation() as tracker:
        model.memory_stats()  # report time may be O(knowledge_num): that is where it belongs
    assert tracker.largest >= knowledge_num


def test_inference_cache_of_the_projected_table_follows_weight_updates():
    model = tiny().eval()
    ids = torch.randint(1, 300, (1, 10))
    with torch.no_grad():
        before = model(ids).logits
        assert torch.equal(model(ids).logits, before)  # cached table, same answer
        model.layers[0].memory.value.weight.mul_(3.0)  # an optimizer-style in-place update
        after = model(ids).logits
    assert not torch.allclose(before, after)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, after)


# ----------------------------------------------------------------------------- bf16 autocast and torch.compile


def exactly_bf16_queries(model, seed=0):
    """A first memory layer and an input whose queries bf16 represents exactly: inputs of +-1 (RMSNorm
    leaves them as they are at norm_eps 1e-12) and a query projection of multiples of 1/8, so
    autocast changes the rounding of everything else but not which entries are read."""
    memory = model.layers[0].memory
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        memory.query.weight.copy_(torch.randint(-1, 2, memory.query.weight.shape, generator=g) / 8)
    h_attn = torch.randint(0, 2, (2, 16, model.config.dim), generator=g).float() * 2 - 1
    return memory, h_attn


def assert_close_to_scale(actual, expected, tolerance):
    assert (actual.float() - expected).abs().max() <= tolerance * expected.abs().max()


def test_bf16_autocast_memory_layer_agrees_with_fp32_forward_and_backward():
    model = tiny(norm_eps=1e-12)
    memory, h_attn = exactly_bf16_queries(model)
    grad = torch.randn(h_attn.shape, generator=torch.Generator().manual_seed(1))
    runs = []
    for bf16 in (False, True):
        model.zero_grad()
        memory.capture = []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out, _ = memory(h_attn, model.memory_bank, model.tok_embeddings.weight)
        out.float().backward(grad)
        grads = {n: p.grad.clone() for n, p in [*memory.named_parameters(), ("embedding", model.tok_embeddings.weight)]}
        runs.append((out.detach(), grads, memory.capture[0][0]))
    (out32, grads32, entries32), (out16, grads16, entries16) = runs
    assert out16.dtype == torch.bfloat16 and torch.equal(entries16, entries32)
    assert_close_to_scale(out16, out32, 2e-2)
    for name, expected in grads32.items():
        assert_close_to_scale(grads16[name], expected, 2e-2)


def test_bf16_autocast_selects_exactly_the_fp32_candidates():
    memory = tiny(knowledge_num=4096, num_candidates=16).layers[0].memory
    query = torch.randn(512, 32, generator=torch.Generator().manual_seed(0))
    scores, entries = memory.lookup(query)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_scores, autocast_entries = memory.lookup(query)
        bf16_query_scores, bf16_query_entries = memory.lookup(query.bfloat16())  # as the query layer gives it
    assert autocast_scores.dtype == torch.float32
    assert torch.equal(autocast_scores, scores) and torch.equal(autocast_entries, entries)
    reference_scores, reference_entries = memory.lookup(query.bfloat16().float())
    assert torch.equal(bf16_query_scores, reference_scores) and torch.equal(bf16_query_entries, reference_entries)


def test_compiled_training_step_equals_eager_without_graph_breaks():
    def loss_of(model, ids):
        out = model(ids)
        return F.cross_entropy(out.logits.flatten(0, 1), ids.flatten()) + out.aux_loss

    ids = torch.randint(1, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    compiled_loss_of = torch.compile(loss_of, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break fails
    runs = []
    try:
        for step in (loss_of, compiled_loss_of):
            model = tiny(similarity_loss_weight=0.1, diversity_loss_weight=0.1)
            loss = step(model, ids)
            loss.backward()
            runs.append((loss.detach(), [p.grad for p in model.parameters()], model.memory_stats(),
                         [layer.take_pending() for _, layer in model.memory_layers()]))
    finally:
        torch._dynamo.reset()
    (loss, grads, stats, pending), (compiled_loss, compiled_grads, compiled_stats, compiled_pending) = runs
    assert torch.equal(compiled_loss, loss)
    assert all(torch.equal(a, b) for a, b in zip(compiled_grads, grads))
    assert compiled_stats == stats  # the statistics window and the EMA store still see the compiled step
    assert all(torch.equal(a, b) for a, b in zip(torch.utils._pytree.tree_leaves(compiled_pending),
                                                 torch.utils._pytree.tree_leaves(pending)))
