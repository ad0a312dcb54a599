"""`minimind convert IN OUT`: the lab's weight format <-> current upstream MiniMind's.

The lab format is MiniMind2's legacy names (`tok_embeddings`, `layers.N.attention.wq`,
`feed_forward.w1`, `output`, ...) with interleaved ("complex number") RoPE: models/model.py's
`apply_rope` rotates the pairs (x[2i], x[2i+1]) of each head. Upstream jingyaogong/minimind
from a62faf3 on publishes Hugging Face-style names (`model.embed_tokens`,
`model.layers.N.self_attn.q_proj`, `mlp.gate_proj`, `lm_head`, ...) and half-split RoPE
(`rotate_half`: pairs (x[i], x[i + D/2])). Both rotate the same frequency i, so the two
models compute the same function once each head's q and k output rows are reordered:
upstream row i is lab row 2i and upstream row D/2 + i is lab row 2i + 1. Every other
tensor is renamed only, so lab -> upstream -> lab is bit-identical.

Inputs: a `.pth` (a minimind checkpoint, a raw state dict of either format) or a
Hugging Face-style folder (`model.safetensors` or `pytorch_model.bin`, plus `config.json`).
Outputs: lab -> upstream writes a folder with `model.safetensors` and `config.json`
(`pytorch_model.bin` when OUT ends in .bin, a raw state dict when OUT ends in .pth);
upstream -> lab writes a minimind checkpoint (module `model`, preset `original`) that
`minimind eval --model-path` loads without further options.

Only the MiniMind2 parts convert: a model with memory layers has nothing upstream to map
to, and the converter says so instead of dropping weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from minimind.atomic import write_json
from minimind.errors import MinimindError, UsageError

UPSTREAM_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILE = "config.json"

# lab name -> upstream name, for every tensor except the per-layer ones (handled by pattern)
_TOP = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}
_LAYER = {"attention.wq.weight": "self_attn.q_proj.weight", "attention.wk.weight": "self_attn.k_proj.weight",
          "attention.wv.weight": "self_attn.v_proj.weight", "attention.wo.weight": "self_attn.o_proj.weight",
          "attention_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
          "feed_forward.gate.weight": "mlp.gate.weight"}
_FFN = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
_LAB_LAYER = re.compile(r"layers\.(\d+)\.(.+)")
_UP_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
# model config field (lab) <-> config.json key (upstream)
_CONFIG = {"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
           "n_kv_heads": "num_key_value_heads", "vocab_size": "vocab_size", "hidden_dim": "intermediate_size",
           "max_seq_len": "max_position_embeddings", "norm_eps": "rms_norm_eps", "rope_theta": "rope_theta",
           "dropout": "dropout", "flash_attn": "flash_attn", "use_moe": "use_moe",
           "num_experts_per_tok": "num_experts_per_tok", "n_routed_experts": "n_routed_experts",
           "n_shared_experts": "n_shared_experts", "aux_loss_alpha": "aux_loss_alpha", "seq_aux": "seq_aux",
           "norm_topk_prob": "norm_topk_prob"}


# --- the per-head RoPE reordering -----------------------------------------------------

def interleaved_to_half(weight, n_heads: int):
    """Rows of a q/k projection for half-split RoPE from rows for interleaved RoPE."""
    rows, cols = weight.shape
    head_dim = rows // n_heads
    return weight.reshape(n_heads, head_dim // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def half_to_interleaved(weight, n_heads: int):
    """The inverse of interleaved_to_half: rows for interleaved RoPE again."""
    rows, cols = weight.shape
    head_dim = rows // n_heads
    return weight.reshape(n_heads, 2, head_dim // 2, cols).transpose(1, 2).reshape(rows, cols)


# --- names ------------------------------------------------------------------------------

def _lab_layer_to_upstream(rest: str) -> str | None:
    if rest in _LAYER:
        return _LAYER[rest]
    parts = rest.split(".")
    # feed_forward.w1.weight | feed_forward.experts.E.w1.weight | feed_forward.shared_experts.w1.weight
    if parts[0] != "feed_forward" or parts[-1] != "weight" or parts[-2] not in _FFN:
        return None
    proj = _FFN[parts[-2]]
    middle = parts[1:-2]
    if not middle:
        return f"mlp.{proj}.weight"
    if middle[0] == "experts" and len(middle) == 2:
        return f"mlp.experts.{middle[1]}.{proj}.weight"
    if middle == ["shared_experts"]:  # one shared expert here; upstream keeps a list of them
        return f"mlp.shared_experts.0.{proj}.weight"
    return None


def _upstream_layer_to_lab(rest: str) -> str | None:
    inverse = {v: k for k, v in _LAYER.items()}
    if rest in inverse:
        return inverse[rest]
    proj_inverse = {v: k for k, v in _FFN.items()}
    parts = rest.split(".")
    if parts[0] != "mlp" or parts[-1] != "weight" or parts[-2] not in proj_inverse:
        return None
    w = proj_inverse[parts[-2]]
    middle = parts[1:-2]
    if not middle:
        return f"feed_forward.{w}.weight"
    if middle[0] == "experts" and len(middle) == 2:
        return f"feed_forward.experts.{middle[1]}.{w}.weight"
    if middle == ["shared_experts", "0"]:
        return f"feed_forward.shared_experts.{w}.weight"
    if middle[0] == "shared_experts":
        raise MinimindError(f"{rest}: more than one shared expert; the lab's model has at most one")
    return None


def format_of(state: dict[str, Any]) -> str:
    """'lab' or 'upstream', from the names of the tensors."""
    keys = set(state)
    if {"model.embed_tokens.weight", "lm_head.weight"} & keys or any(k.startswith("model.layers.") for k in keys):
        return "upstream"
    if {"tok_embeddings.weight", "output.weight"} & keys or any(_LAB_LAYER.fullmatch(k) for k in keys):
        return "lab"
    raise MinimindError("the weights use neither the lab's names (tok_embeddings, layers.N.attention.wq, ...) "
                        "nor upstream MiniMind's (model.embed_tokens, model.layers.N.self_attn.q_proj, ...)")


# --- state dicts --------------------------------------------------------------------------

def lab_to_upstream(state: dict[str, Any], n_heads: int, n_kv_heads: int) -> dict[str, Any]:
    """Upstream-named tensors from lab-named ones; q/k rows reordered per head."""
    memory = sorted(k for k in state if k == "memory_bank" or k == "memory_frozen" or ".memory." in k)
    if memory:
        raise MinimindError(f"the model has memory layers ({memory[0]}, ...), which upstream MiniMind does not have; "
                            "only the original preset (and its MoE variant) converts")
    out = {}
    for key, tensor in state.items():
        if key in _TOP:
            out[_TOP[key]] = tensor
            continue
        match = _LAB_LAYER.fullmatch(key)
        name = _lab_layer_to_upstream(match.group(2)) if match else None
        if name is None:
            raise MinimindError(f"no upstream name for the lab tensor {key}")
        if name == "self_attn.q_proj.weight":
            tensor = interleaved_to_half(tensor, n_heads)
        elif name == "self_attn.k_proj.weight":
            tensor = interleaved_to_half(tensor, n_kv_heads)
        out[f"model.layers.{match.group(1)}.{name}"] = tensor
    return out


def upstream_to_lab(state: dict[str, Any], n_heads: int, n_kv_heads: int) -> dict[str, Any]:
    """Lab-named tensors from upstream-named ones; q/k rows back to interleaved order."""
    top_inverse = {v: k for k, v in _TOP.items()}
    out = {}
    for key, tensor in state.items():
        if key in top_inverse:
            out[top_inverse[key]] = tensor
            continue
        match = _UP_LAYER.fullmatch(key)
        name = _upstream_layer_to_lab(match.group(2)) if match else None
        if name is None:
            raise MinimindError(f"no lab name for the upstream tensor {key}")
        if name == "attention.wq.weight":
            tensor = half_to_interleaved(tensor, n_heads)
        elif name == "attention.wk.weight":
            tensor = half_to_interleaved(tensor, n_kv_heads)
        out[f"layers.{match.group(1)}.{name}"] = tensor
    # the embedding and the output layer are one tied tensor; a tied save may keep only one
    for a, b in (("tok_embeddings.weight", "output.weight"), ("output.weight", "tok_embeddings.weight")):
        if a in out and b not in out:
            out[b] = out[a]
    return out


# --- configs --------------------------------------------------------------------------------

def upstream_config(model_config: dict[str, Any], hidden_dim: int) -> dict[str, Any]:
    """config.json for upstream's MiniMindConfig from the lab's model config."""
    cfg = {"architectures": ["MiniMindForCausalLM"], "model_type": "minimind", "hidden_act": "silu",
           "bos_token_id": 1, "eos_token_id": 2, "scoring_func": "softmax"}
    for lab_key, up_key in _CONFIG.items():
        if lab_key in model_config:
            cfg[up_key] = model_config[lab_key]
    cfg["intermediate_size"] = hidden_dim
    return cfg


def lab_config(config_json: dict[str, Any]) -> dict[str, Any]:
    """The lab's model config (preset original) from upstream's config.json."""
    if config_json.get("rope_scaling") or config_json.get("inference_rope_scaling"):
        raise MinimindError("config.json enables RoPE scaling (YaRN), which the lab's model does not implement")
    if config_json.get("hidden_act", "silu") != "silu":
        raise MinimindError(f"config.json: hidden_act {config_json['hidden_act']!r}; the lab's model uses silu")
    inverse = {v: k for k, v in _CONFIG.items()}
    cfg = {"preset": "original"}
    for up_key, value in config_json.items():
        if up_key in inverse and value is not None:
            cfg[inverse[up_key]] = value
    return cfg


def _infer_heads(state: dict[str, Any], fmt: str, n_heads: int | None, n_kv_heads: int | None) -> tuple[int, int]:
    """Head counts for a raw state dict: n_heads is not in the weights, n_kv_heads follows from it."""
    if n_heads is None:
        raise UsageError("a raw state dict does not record its head count: give --n-heads (MiniMind2: 8)")
    q, k = (("layers.0.attention.wq.weight", "layers.0.attention.wk.weight") if fmt == "lab"
            else ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"))
    if n_kv_heads is None:
        if q not in state or k not in state:
            raise UsageError("give --n-kv-heads: layer 0's attention weights are not in the file")
        head_dim = state[q].shape[0] // n_heads
        n_kv_heads = state[k].shape[0] // head_dim
    return n_heads, n_kv_heads


# --- files -------------------------------------------------------------------------------------

def read_weights(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
    """(state dict, lab model_config or None, upstream config.json or None) of a file or folder."""
    from models import registry

    path = Path(path)
    if path.is_dir():
        config_path = path / CONFIG_FILE
        if not config_path.is_file():
            raise MinimindError(f"{path}: a Hugging Face-style folder needs {CONFIG_FILE}")
        try:
            config_json = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise MinimindError(f"{config_path}: not readable JSON ({error})") from None
        for name in UPSTREAM_FILES:
            if (path / name).is_file():
                return _load_tensors(path / name), None, config_json
        raise MinimindError(f"{path}: no {' or '.join(UPSTREAM_FILES)}")
    if path.suffix == ".safetensors":
        return _load_tensors(path), None, _sibling_config(path)
    data = registry.read_checkpoint(path)
    state = {k: v for k, v in registry.weights(data).items() if hasattr(v, "shape")}
    for prefix in registry.WRAPPER_PREFIXES:
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    recorded = data.get("model_config") if isinstance(data.get("model_config"), dict) else None
    return state, recorded, _sibling_config(path) if recorded is None else None


def _sibling_config(path: Path) -> dict[str, Any] | None:
    config_path = path.parent / CONFIG_FILE
    try:
        return json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else None
    except (OSError, ValueError) as error:
        raise MinimindError(f"{config_path}: not readable JSON ({error})") from None


def _load_tensors(path: Path) -> dict[str, Any]:
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (as registry.read_checkpoint: any failure means unusable)
        raise MinimindError(f"{path} is truncated or corrupted ({type(error).__name__})") from None
    if not isinstance(data, dict):
        raise MinimindError(f"{path} does not hold a state dict")
    return data


def _write_upstream(out: Path, state: dict[str, Any], config_json: dict[str, Any]) -> str:
    import torch

    from minimind.atomic import atomic_open

    # Tied tensors share memory; safetensors refuses shared storage, so each is written on its own.
    plain = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if out.suffix == ".pth":  # a raw upstream-named state dict, next to nothing else
        with atomic_open(out, "wb", encoding=None) as handle:
            torch.save(plain, handle)
        return str(out)
    folder = out.with_suffix("") if out.suffix == ".bin" else out
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".bin":
        with atomic_open(folder / "pytorch_model.bin", "wb", encoding=None) as handle:
            torch.save(plain, handle)
    else:
        from safetensors.torch import save

        with atomic_open(folder / "model.safetensors", "wb", encoding=None) as handle:
            handle.write(save(plain, metadata={"format": "pt"}))
    write_json(folder / CONFIG_FILE, config_json)
    return str(folder)


def convert(src: Path, out: Path, n_heads: int | None = None, n_kv_heads: int | None = None,
            raw: bool = False) -> str:
    """Convert src to the other format at out; return a one-line summary."""
    from models import registry

    src, out = Path(src), Path(out)
    if not src.exists():
        raise MinimindError(f"{src} not found")
    if out.resolve() == src.resolve():
        raise UsageError("OUT must differ from IN")
    state, recorded, config_json = read_weights(src)
    fmt = format_of(state)
    if fmt == "lab":
        cfg = dict(recorded or {})
        if cfg:
            heads, kv_heads = n_heads or cfg.get("n_heads", 8), n_kv_heads or cfg.get("n_kv_heads", 2)
        else:
            heads, kv_heads = _infer_heads(state, fmt, n_heads, n_kv_heads)
            cfg = _shape_config(state, heads, kv_heads)
        cfg.update(n_heads=heads, n_kv_heads=kv_heads)
        converted = lab_to_upstream(state, heads, kv_heads)
        hidden = _hidden_dim(state)
        if hidden is None:
            raise MinimindError("the model has no feed-forward layer (preset no_feed); upstream MiniMind always has one")
        cfg.setdefault("dim", int(state["tok_embeddings.weight"].shape[1]))
        where = _write_upstream(out, converted, upstream_config(cfg, hidden))
        return f"wrote upstream MiniMind weights ({len(converted)} tensors, half-split RoPE) to {where}"
    if config_json is not None:
        heads = n_heads or config_json.get("num_attention_heads", 8)
        kv_heads = n_kv_heads or config_json.get("num_key_value_heads", heads)
        cfg = lab_config(config_json)
    else:
        heads, kv_heads = _infer_heads(state, fmt, n_heads, n_kv_heads)
        cfg = None
    converted = upstream_to_lab(state, heads, kv_heads)
    if cfg is None:
        cfg = {"preset": "original", **_shape_config(converted, heads, kv_heads)}
    cfg.update(n_heads=heads, n_kv_heads=kv_heads)
    hidden = _hidden_dim(converted)
    if hidden is not None:
        cfg["hidden_dim"] = hidden
    if raw:
        import torch

        from minimind.atomic import atomic_open
        with atomic_open(out, "wb", encoding=None) as handle:
            torch.save(converted, handle)
        return f"wrote a lab-format state dict ({len(converted)} tensors) to {out}"
    registry.model_config(Path(__file__).parent, registry.LIVING, cfg)  # refuses a config the model cannot build
    registry.save_checkpoint(out, {"module": registry.LIVING, "model_config": cfg, "model": converted,
                                   "converted_from": str(src)})
    return f"wrote a lab checkpoint ({len(converted)} tensors, preset original) to {out}"


def _hidden_dim(lab_state: dict[str, Any]) -> int | None:
    for key, tensor in lab_state.items():
        if key.endswith("feed_forward.w1.weight") or key.endswith("experts.0.w1.weight"):
            return int(tensor.shape[0])
    for key, tensor in lab_state.items():
        if key.endswith("mlp.gate_proj.weight") or key.endswith("experts.0.gate_proj.weight"):
            return int(tensor.shape[0])
    return None


def _shape_config(lab_state: dict[str, Any], n_heads: int, n_kv_heads: int) -> dict[str, Any]:
    """What a raw lab-named state dict says about its shape: width, depth, vocabulary, MoE."""
    return shape_config(lab_state) | {"n_heads": n_heads, "n_kv_heads": n_kv_heads}


def shape_config(lab_state: dict[str, Any]) -> dict[str, Any]:
    """Model config fields a lab-named state dict fixes by itself (also used by eval for raw files)."""
    out: dict[str, Any] = {}
    emb = lab_state.get("tok_embeddings.weight", lab_state.get("output.weight"))
    if emb is not None and len(getattr(emb, "shape", ())) == 2:
        out["vocab_size"], out["dim"] = int(emb.shape[0]), int(emb.shape[1])
    layers = {int(m.group(1)) for k in lab_state if (m := _LAB_LAYER.fullmatch(k))}
    if layers:
        out["n_layers"] = max(layers) + 1
    experts = {int(m.group(1)) for k in lab_state if (m := re.fullmatch(r"layers\.0\.feed_forward\.experts\.(\d+)\..+", k))}
    if experts:
        out["use_moe"] = True
        out["n_routed_experts"] = max(experts) + 1
        out["n_shared_experts"] = int(any(k.startswith("layers.0.feed_forward.shared_experts.") for k in lab_state))
    hidden = _hidden_dim(lab_state)
    if hidden is not None:
        out["hidden_dim"] = hidden
    bank = lab_state.get("memory_bank")
    if bank is not None and len(getattr(bank, "shape", ())) == 2:
        out["knowledge_num"], out["knowledge_length"] = int(bank.shape[0]), int(bank.shape[1])
    return out
