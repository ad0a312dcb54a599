"""models/model.py: config validation, presets, MiniMind2 compatibility, KV-cache equivalence."""

import math

import pytest
import torch
import torch.nn.functional as F

from models.model import PRESET_ALIASES, PRESETS, MiniMindLM, ModelConfig

from model_helpers import TINY, build_tiny, one_thread  # noqa: F401 (one_thread is an autouse fixture)


def tiny(**overrides) -> MiniMindLM:
    return build_tiny(TINY, **overrides)


# ----------------------------------------------------------------------------- config


def test_defaults_are_minimind2():
    cfg = ModelConfig()
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size) == (512, 8, 8, 2, 6400)
    assert cfg.ffn_hidden_dim == 1408 and cfg.hidden_dim is None
    assert (cfg.rope_theta, cfg.norm_eps, cfg.max_seq_len) == (1e6, 1e-5, 512)
    assert (cfg.knowledge_num, cfg.knowledge_length, cfg.knowledge_dim, cfg.num_candidates) == (1048576, 32, 128, 32)
    assert (cfg.ema_decay, cfg.ema_update_freq, cfg.freeze_ratio, cfg.freeze_policy) == (0.9, 5, 0.2, "random")


@pytest.mark.parametrize("bad, field", [
    ({"knowledge_num": 1000}, "knowledge_num must be a perfect square, got 1000"),
    ({"dim": "512"}, "dim must be an int"),
    ({"dim": 512.0}, "dim must be an int"),
    ({"n_layers": True}, "n_layers must be an int"),
    ({"flash_attn": 1}, "flash_attn must be a bool"),
    ({"dropout": "0.1"}, "dropout must be a finite number"),
    ({"dropout": 1.5}, "dropout must be between"),
    ({"preset": "transformer"}, "preset must be one of"),
    ({"freeze_policy": "oldest"}, "freeze_policy must be one of"),
    ({"knowledge_dim": 127}, "knowledge_dim must be even"),
    ({"n_kv_heads": 3}, "n_kv_heads must divide n_heads"),
    ({"num_candidates": 64, "knowledge_num": 1024}, "num_candidates must be at most"),
    ({"hidden_dim": 4}, "hidden_dim must be between"),
])
def test_config_errors_name_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**bad)


def test_from_dict_refuses_unknown_keys_and_round_trips():
    with pytest.raises(ValueError, match="unknown model config key.*knowlege_num"):
        ModelConfig.from_dict({"knowlege_num": 4})
    with pytest.raises(ValueError, match="unknown model config key.*scoring_fn"):
        ModelConfig.from_dict({"scoring_fn": "softmax"})
    cfg = ModelConfig(preset="model", dim=256, ema_decay=1)  # alias normalised, int accepted for a float
    assert cfg.preset == "hybrid" and cfg.ema_decay == 1.0 and isinstance(cfg.ema_decay, float)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_from_dict_drops_the_retired_scoring_func_only_with_its_one_value():
    old = {"preset": "original", "use_moe": True, "scoring_func": "softmax"}
    assert ModelConfig.from_dict(old) == ModelConfig(preset="original", use_moe=True)
    assert "scoring_func" in old  # the caller's dict is left as it was
    assert "scoring_func" not in ModelConfig().to_dict()
    with pytest.raises(ValueError, match="scoring_func was retired.*'sigmoid'"):
        ModelConfig.from_dict({"scoring_func": "sigmoid"})


def test_fields_schema_covers_every_field():
    schema = ModelConfig.fields_schema()
    assert set(schema) == set(ModelConfig().to_dict())
    assert schema["knowledge_num"]["type"] == "int" and schema["knowledge_num"]["default"] == 1048576
    assert schema["preset"]["choices"][:4] == list(PRESETS)
    assert schema["hidden_dim"]["nullable"] and not schema["dim"]["nullable"]
    for name, entry in schema.items():
        assert entry["help"] and set(entry) == {"type", "help", "min", "max", "choices", "default", "nullable"}, name


# ----------------------------------------------------------------------------- presets


def record_aux_sources(model) -> dict:
    """Forward hooks keeping what aux_loss is made of: each MoE gate's balance loss, each memory layer's queries."""
    seen = {"moe": [], "queries": []}
    for block in model.layers:
        if block.use_moe and block.feed_forward is not None:
            block.feed_forward.gate.register_forward_hook(lambda gate, args, out: seen["moe"].append(out[2]))
        if block.memory is not None:
            block.memory.query.register_forward_hook(
                lambda query, args, out, memory=block.memory: seen["queries"].append((memory, out)))
    return seen


def expected_aux_loss(seen: dict, weight: float) -> torch.Tensor:
    """The MoE balance losses plus, per memory layer, weight * (similarity + diversity), the
    similarity's best key found by a flat scan of all keys rather than the product-key lookup."""
    total = sum(seen["moe"], torch.zeros(()))
    for memory, query in seen["queries"]:
        side, half = memory.side, memory.keys.shape[-1]
        full_keys = torch.cat([memory.keys[0][:, None].expand(side, side, half),
                               memory.keys[1][None].expand(side, side, half)], -1).reshape(side * side, -1)
        best_key = full_keys[(query @ full_keys.T).argmax(-1)]
        similarity = (1 - F.cosine_similarity(query, best_key, dim=-1)).mean()
        diversity = F.normalize(query, dim=-1).mean(0).pow(2).sum()
        total = total + weight * (similarity + diversity)
    return total


@pytest.mark.parametrize("preset", [*PRESETS, *PRESET_ALIASES])
def test_every_preset_trains_a_step(preset):
    model = tiny(preset=preset, use_moe=preset == "original", similarity_loss_weight=0.1, diversity_loss_weight=0.1)
    seen = record_aux_sources(model)
    ids = torch.randint(0, 300, (2, 24))
    out = model(ids)
    assert out.logits.shape == (2, 24, 300) and out.aux_loss.shape == () and out.past_key_values is None
    loss = F.cross_entropy(out.logits.flatten(0, 1), ids.flatten()) + out.aux_loss
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    spec = PRESETS[PRESET_ALIASES.get(preset, preset)]
    # MoE is on for "original" only here; memory presets add similarity and diversity losses
    assert (len(seen["moe"]), len(seen["queries"])) == ((2 if preset == "original" else 0), (2 if spec.memory else 0))
    assert all(balance > 0 for balance in seen["moe"])
    torch.testing.assert_close(out.aux_loss, expected_aux_loss(seen, 0.1))
    assert (out.aux_loss > 0) == (preset == "original" or spec.memory)  # exactly 0 for the rest
    assert ("memory_bank" in model.state_dict()) == spec.memory


@pytest.mark.parametrize("preset", list(PRESETS))
def test_greedy_decode_is_identical_with_and_without_kv_cache(preset):
    model = tiny(preset=preset).eval()
    prompt = torch.randint(3, 300, (1, 7))
    cached = model.generate(prompt, 64, eos_token_id=None, use_cache=True)
    recomputed = model.generate(prompt, 64, eos_token_id=None, use_cache=False)
    assert cached.shape == (1, 71)
    assert torch.equal(cached, recomputed)


def test_kv_cache_logits_match_full_forward_including_chunked_prefill():
    model = tiny(preset="hybrid").eval()
    ids = torch.randint(3, 300, (2, 20))
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :12], use_cache=True)
        rest = model(ids[:, 12:], past_key_values=first.past_key_values, use_cache=True)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), full, atol=1e-5, rtol=1e-4)


def test_non_flash_attention_matches_flash():
    flash, manual = tiny(preset="original"), tiny(preset="original", flash_attn=False)
    manual.load_state_dict(flash.state_dict())
    ids = torch.randint(0, 300, (2, 16))
    torch.testing.assert_close(flash(ids).logits, manual(ids).logits, atol=1e-5, rtol=1e-4)


def test_generate_stops_at_eos_and_pads_finished_rows():
    model = tiny(preset="original").eval()
    prompt = torch.randint(3, 300, (2, 5))
    first = model.generate(prompt, 1)[:, -1]
    out = model.generate(prompt, 10, eos_token_id=int(first[0]))
    assert out.shape[1] <= 15 and int(out[0, 5]) == int(first[0])
    assert (out[0, 6:] == 0).all()


def test_sampling_respects_top_p_and_sequence_limit():
    model = tiny(preset="no_feed").eval()
    torch.manual_seed(1)
    out = model.generate(torch.randint(3, 300, (1, 4)), 8, temperature=1.0, top_p=0.5, repetition_penalty=1.3)
    assert out.shape[1] <= 12 and int(out.max()) < 300
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 129, dtype=torch.long))
    assert model.generate(torch.randint(3, 300, (1, 120)), 50, eos_token_id=None).shape == (1, 128)


# ----------------------------------------------------------------------------- MiniMind2 compatibility


def minimind2_state_names(n_layers: int, use_moe=False, n_experts=4) -> set[str]:
    """Parameter names of MiniMind2's LMConfig-era model/model.py (pos_cis and masks are non-persistent)."""
    names = {"tok_embeddings.weight", "norm.weight", "output.weight"}
    for i in range(n_layers):
        p = f"layers.{i}."
        names |= {p + n for n in ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
                                  "attention.wo.weight", "attention_norm.weight", "ffn_norm.weight")}
        ffns = ([f"feed_forward.experts.{e}." for e in range(n_experts)] + ["feed_forward.shared_experts."]
                if use_moe else ["feed_forward."])
        names |= {p + f + w for f in ffns for w in ("w1.weight", "w2.weight", "w3.weight")}
        if use_moe:
            names.add(p + "feed_forward.gate.weight")
    return names


def test_original_preset_has_minimind2_names_and_size():
    model = MiniMindLM(ModelConfig(preset="original"))
    assert set(model.state_dict()) == minimind2_state_names(8)
    assert sum(p.numel() for p in model.parameters()) == 25_829_888  # ~25.8M, tied embeddings counted once
    assert model.output.weight is model.tok_embeddings.weight
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["layers.0.attention.wk.weight"] == (128, 512)
    assert shapes["layers.0.feed_forward.w1.weight"] == (1408, 512)


def test_minimind2_state_dict_loads_strictly():
    model = tiny(preset="original")
    # a state dict as MiniMind2 would save it: its names, fresh tensors, embeddings tied
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    state["output.weight"] = state["tok_embeddings.weight"]
    assert set(state) == minimind2_state_names(2)
    tiny(preset="original").load_state_dict(state, strict=True)
    moe = tiny(preset="original", use_moe=True)
    assert set(moe.state_dict()) == minimind2_state_names(2, use_moe=True)


def test_no_feed_has_only_attention():
    names = set(tiny(preset="no_feed").state_dict())
    assert not any("feed_forward" in n or "memory" in n for n in names)


def test_rope_matches_minimind2_complex_form():
    from models.model import apply_rope, rope_tables

    head_dim, T = 8, 5
    cos, sin = rope_tables(head_dim, T, 1e6)
    x = torch.randn(1, T, 2, head_dim)
    freqs = 1.0 / (1e6 ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    pos_cis = torch.polar(torch.ones(T, head_dim // 2), torch.outer(torch.arange(T).float(), freqs))
    reference = torch.view_as_real(torch.view_as_complex(x.reshape(1, T, 2, -1, 2)) * pos_cis[None, :, None]).flatten(3)
    torch.testing.assert_close(apply_rope(x, cos, sin), reference)
    assert math.isclose(float(cos[1, 0]), math.cos(1.0), rel_tol=1e-6)
