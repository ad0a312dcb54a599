"""What training keeps for backward, measured (training/saved_memory.py): the memory layer
keeps no full sub-key score tensor and its bag ids in the bank's dtype, with the gradients
of the path that did; the trainer's forward gives bf16 logits under bf16 autocast; and the
memory plan's per-token counts (minimind/memory_plan.py) match the measurement per preset."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import helpers_train as h
from minimind.memory_plan import head_bytes_per_token, layer_bytes_per_token
from models.model import PRESETS as BLOCKS
from models.model import MiniMindLM, ModelConfig, WeightedBagSum, topk_by_groups
from training.saved_memory import measure

TOLERANCE = 0.15  # the plan within 15% of the measurement


def full_score_lookup(memory, query):
    """main 05bce92's lookup: autograd through topk_by_groups, which keeps the whole
    (2, N, sqrt(knowledge_num)) fp32 sub-key score tensor (gather's backward keeps its input)."""
    N, C = query.shape[0], memory.num_candidates
    halves = query.view(N, 2, -1).transpose(0, 1).float()
    with torch.autocast(device_type=query.device.type, enabled=False):
        sub_scores = torch.bmm(halves, memory.keys.float().transpose(1, 2))
    s, i = topk_by_groups(sub_scores.flatten(0, 1), C)
    (s1, s2), (i1, i2) = s.view(2, N, C), i.view(2, N, C)
    pair = s1[:, memory.pair_rows] + s2[:, memory.pair_cols]
    scores, best = pair.topk(C, dim=-1)
    entries = i1.gather(1, memory.pair_rows[best]) * memory.side + i2.gather(1, memory.pair_cols[best])
    return scores, entries


def loss_and_grads(model, ids, autocast: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(ids)
        loss = F.cross_entropy(out.logits.float().flatten(0, 1), ids.flatten()) + out.aux_loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("autocast", [False, True])
def test_losses_and_gradients_equal_the_full_score_path(autocast, monkeypatch):
    # side 128 > 16 * num_candidates: topk_by_groups takes its grouped path (gather), as at MiniMind2 size
    config = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, max_seq_len=32, knowledge_num=128 ** 2,
                  knowledge_length=6, knowledge_dim=32, num_candidates=4, similarity_loss_weight=0.1)
    ids = torch.randint(1, 300, (3, 32), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = MiniMindLM(ModelConfig(**config))
    loss, grads = loss_and_grads(model, ids, autocast)
    for _, memory in model.memory_layers():
        monkeypatch.setattr(memory, "lookup", lambda query, memory=memory: full_score_lookup(memory, query))
    reference_loss, reference_grads = loss_and_grads(model, ids, autocast)
    assert torch.equal(loss, reference_loss)
    assert grads.keys() == reference_grads.keys() and "layers.0.memory.keys" in grads
    for name, grad in grads.items():  # the same products, summed in another order by bmm
        torch.testing.assert_close(grad, reference_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_bag_ids_are_kept_in_the_banks_dtype():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 40, (50, 12), generator=g, dtype=torch.int16)
    weight = torch.rand(50, 12, generator=g, dtype=torch.float64, requires_grad=True)
    table = torch.randn(40, 6, generator=g, dtype=torch.float64, requires_grad=True)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.dtype) or t, lambda t: t):
        out = WeightedBagSum.apply(ids, weight, table)
    assert torch.int16 in kept and torch.int32 not in kept and torch.int64 not in kept
    assert torch.equal(out, F.embedding_bag(ids.long(), table, mode="sum", per_sample_weights=weight))
    assert torch.autograd.gradcheck(lambda w, t: WeightedBagSum.apply(ids, w, t), (weight, table))


def test_the_trainers_forward_returns_bf16_logits_under_bf16_autocast(tmp_path, bundled_data, monkeypatch):
    from training.loop import Trainer
    from training.signals import StopFlag

    monkeypatch.setattr(StopFlag, "install", lambda self: None)  # pytest keeps its own signal handlers
    lab = h.make_lab(tmp_path / "lab", bundled_data)
    run_dir = h.write_config(lab, train={"max_steps": 2, "eval_interval": 0}, launch={"mixed_precision": "bf16"})
    trainer = Trainer(run_dir)
    trainer.setup()
    assert trainer.precision == "bf16"
    ids = torch.randint(3, trainer.unwrapped.config.vocab_size, (2, 16))
    out = trainer.forward(ids)
    assert out.logits.dtype == torch.bfloat16  # accelerate's convert_outputs_to_fp32 made them float32
    assert out.logits.requires_grad
    trainer.train_step()  # the chunked loss takes them as they are


def test_bf16_logits_give_the_loss_and_gradients_of_their_fp32_copy():
    """What dropping accelerate's convert_outputs_to_fp32 changes: the chunked loss works
    in fp32 on either, so the loss is the same, and the logits' gradient is rounded to bf16
    once either way (in the loss, or on its way back from the fp32 copy): the same bits
    when the accumulation scale is a power of two."""
    from training.measures import masked_ce

    torch.manual_seed(0)
    model = MiniMindLM(ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, max_seq_len=32,
                                   knowledge_num=1024, knowledge_length=6, knowledge_dim=32, num_candidates=4))
    ids = torch.randint(1, 300, (3, 33), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 32)
    results = []
    for as_fp32 in (True, False):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(ids[:, :-1]).logits
            loss = masked_ce(logits.float() if as_fp32 else logits, ids[:, 1:], mask)
        (loss / 8).backward()  # accelerate divides by the accumulation steps
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (fp32_loss, fp32_grads), (loss, grads) = results
    assert torch.equal(loss, fp32_loss)
    for name, grad in grads.items():
        assert torch.equal(grad, fp32_grads[name]), name


PRESETS = ["memory", "original", "hybrid", "no_feed"]


@pytest.mark.parametrize("preset, precision, moe", [(p, "bf16", False) for p in PRESETS]
                         + [("memory", "no", False), ("original", "bf16", True)])
def test_the_plan_counts_what_a_training_forward_keeps(preset, precision, moe):
    """MiniMind2 size (ModelConfig defaults: dim 512, 1,048,576 entries x 32 tokens, 32
    candidates), seq 512; scaled down only in layers (1 and 2) and batch (1 and 2)."""
    measured = measure({"preset": preset, "use_moe": moe}, precision, seq=512)
    m = ModelConfig(preset=preset, max_seq_len=512, use_moe=moe).to_dict()
    layer, head = layer_bytes_per_token(m, BLOCKS[preset], precision), head_bytes_per_token(m, precision)
    assert layer == pytest.approx(measured["layer_bytes_per_token"], rel=TOLERANCE), measured
    assert head == pytest.approx(measured["head_bytes_per_token"], rel=TOLERANCE), measured
    # the lab's recipe of 8 layers, as a whole
    assert 8 * layer + head == pytest.approx(8 * measured["layer_bytes_per_token"] + measured["head_bytes_per_token"],
                                             rel=TOLERANCE)


def test_the_memory_preset_keeps_at_most_28_kib_per_token_per_layer():
    # main 05bce92: 36,264 B (35.4 KiB) under bf16 autocast; now 22,952 B (22.4 KiB)
    measured = measure({"preset": "memory"}, "bf16", seq=512)
    assert measured["layer_bytes_per_token"] <= 28 * 1024, measured
