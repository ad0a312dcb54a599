"""`minimind convert`: lab format <-> current upstream MiniMind (HF-style names, half-split RoPE).

The upstream side is checked against a reference forward written here from upstream's
definition (rotate_half RoPE, q_proj/k_proj/v_proj/o_proj, gate/up/down SwiGLU,
RMSNorm, tied lm_head), so the test does not trust the converter's own idea of the format.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from minimind.errors import MinimindError, UsageError
from models import convert
from models.model import MiniMindLM, ModelConfig
from models.registry import read_checkpoint

CFG = dict(preset="original", dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, max_seq_len=32)


def lab_model(**over) -> MiniMindLM:
    torch.manual_seed(0)
    model = MiniMindLM(ModelConfig(**{**CFG, **over})).eval()
    with torch.no_grad():  # norms at 1 would hide a mislabelled norm: make every tensor distinct
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(torch.rand_like(p))
    return model


def upstream_forward(state: dict, cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    """Upstream MiniMindForCausalLM's forward (a62faf3 on), written out from its definition."""
    dim, heads, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps, T = dim // heads, cfg["rms_norm_eps"], ids.shape[1]

    def norm(x, w):
        return w * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).type_as(x)

    freqs = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    angles = torch.outer(torch.arange(T).float(), freqs)
    cos = torch.cat([angles.cos(), angles.cos()], -1)[None, :, None, :]
    sin = torch.cat([angles.sin(), angles.sin()], -1)[None, :, None, :]

    def rotate_half(x):
        return torch.cat((-x[..., hd // 2:], x[..., : hd // 2]), dim=-1)

    h = F.embedding(ids, state["model.embed_tokens.weight"])
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = norm(h, state[p + "input_layernorm.weight"])
        q = (x @ state[p + "self_attn.q_proj.weight"].T).view(1, T, heads, hd)
        k = (x @ state[p + "self_attn.k_proj.weight"].T).view(1, T, kv, hd)
        v = (x @ state[p + "self_attn.v_proj.weight"].T).view(1, T, kv, hd)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k = k[:, :, :, None].expand(1, T, kv, heads // kv, hd).reshape(1, T, heads, hd)
        v = v[:, :, :, None].expand(1, T, kv, heads // kv, hd).reshape(1, T, heads, hd)
        scores = (q.transpose(1, 2) @ k.transpose(1, 2).transpose(-2, -1)) / math.sqrt(hd)
        scores = scores + torch.full((T, T), float("-inf")).triu(1)
        y = (scores.softmax(-1) @ v.transpose(1, 2)).transpose(1, 2).reshape(1, T, dim)
        h = h + y @ state[p + "self_attn.o_proj.weight"].T
        x = norm(h, state[p + "post_attention_layernorm.weight"])
        gate, up = x @ state[p + "mlp.gate_proj.weight"].T, x @ state[p + "mlp.up_proj.weight"].T
        h = h + (F.silu(gate) * up) @ state[p + "mlp.down_proj.weight"].T
    return norm(h, state["model.norm.weight"]) @ state["lm_head.weight"].T


def test_rope_reordering_is_a_per_head_permutation_and_its_inverse():
    w = torch.arange(8 * 3, dtype=torch.float32).view(8, 3)  # 2 heads of head_dim 4
    half = convert.interleaved_to_half(w, 2)
    assert half[:, 0].tolist() == [0, 6, 3, 9, 12, 18, 15, 21]  # rows 0,2,1,3 of each head
    assert torch.equal(convert.half_to_interleaved(half, 2), w)


@pytest.mark.parametrize("out_name", ["up", "up.bin", "up.pth"])
def test_lab_to_upstream_logits_agree_and_round_trip_is_bit_identical(tmp_path, out_name):
    model = lab_model()
    src = tmp_path / "lab.pth"
    torch.save(model.state_dict(), src)  # a raw MiniMind2-style state dict
    out = tmp_path / out_name
    convert.convert(src, out, n_heads=4)
    if out_name == "up.pth":
        state = torch.load(out, weights_only=True)
        cfg = convert.upstream_config(model.config.to_dict(), model.config.ffn_hidden_dim)
    else:
        folder = out.with_suffix("") if out_name.endswith(".bin") else out
        state, _, cfg = convert.read_weights(folder)
        assert cfg["num_key_value_heads"] == 2 and cfg["intermediate_size"] == model.config.ffn_hidden_dim
    assert set(state) >= {"model.embed_tokens.weight", "lm_head.weight", "model.layers.1.self_attn.q_proj.weight",
                          "model.layers.0.mlp.down_proj.weight", "model.layers.0.post_attention_layernorm.weight"}
    ids = torch.randint(0, 64, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(ids).logits
        theirs = upstream_forward(state, {**cfg, "rms_norm_eps": 1e-5, "rope_theta": 1e6}, ids)
    assert (ours - theirs).abs().max().item() < 1e-5

    back = tmp_path / "back.pth"
    convert.convert(out if out_name != "up.bin" else out.with_suffix(""), back, n_heads=4)
    restored = read_checkpoint(back)
    original = model.state_dict()
    assert set(restored["model"]) == set(original)
    for key, tensor in original.items():
        assert torch.equal(restored["model"][key], tensor), key  # bit-identical, not merely close
    assert restored["model_config"]["preset"] == "original"
    rebuilt = MiniMindLM(ModelConfig(**restored["model_config"])).eval()
    rebuilt.load_state_dict(restored["model"])
    with torch.no_grad():
        assert torch.equal(rebuilt(ids).logits, ours)


def test_upstream_tied_save_with_only_lm_head_converts(tmp_path):
    model = lab_model()
    state = convert.lab_to_upstream(model.state_dict(), 4, 2)
    del state["model.embed_tokens.weight"]  # what a tied save_pretrained may keep
    src = tmp_path / "hf"
    src.mkdir()
    from safetensors.torch import save_file
    save_file({k: v.clone().contiguous() for k, v in state.items()}, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps(convert.upstream_config(model.config.to_dict(), 96)))
    convert.convert(src, tmp_path / "lab.pth")
    back = read_checkpoint(tmp_path / "lab.pth")["model"]
    assert torch.equal(back["tok_embeddings.weight"], model.state_dict()["tok_embeddings.weight"])


def test_moe_round_trip_maps_experts_gate_and_shared_expert(tmp_path):
    model = lab_model(use_moe=True, n_routed_experts=3)
    state = model.state_dict()
    up = convert.lab_to_upstream(state, 4, 2)
    assert {"model.layers.0.mlp.gate.weight", "model.layers.0.mlp.experts.2.up_proj.weight",
            "model.layers.1.mlp.shared_experts.0.down_proj.weight"} <= set(up)
    back = convert.upstream_to_lab(up, 4, 2)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    inferred = convert.shape_config(state)
    assert inferred["use_moe"] and inferred["n_routed_experts"] == 3 and inferred["n_shared_experts"] == 1


def test_memory_models_and_unknown_names_are_refused(tmp_path):
    memory = lab_model(preset="memory", knowledge_num=16, knowledge_length=4, knowledge_dim=8, num_candidates=4)
    src = tmp_path / "mem.pth"
    torch.save(memory.state_dict(), src)
    with pytest.raises(MinimindError, match="memory layers"):
        convert.convert(src, tmp_path / "out", n_heads=4)
    torch.save({"foo.weight": torch.zeros(2, 2)}, src)
    with pytest.raises(MinimindError, match="neither"):
        convert.convert(src, tmp_path / "out", n_heads=4)
    torch.save(lab_model().state_dict(), src)
    with pytest.raises(UsageError, match="--n-heads"):
        convert.convert(src, tmp_path / "out")
