"""Turning a checkpoint (ours, or a raw MiniMind-style state dict) into a model.

Used by `training.evaluate`. `--model-type` follows the lab's eval_model.py: a preset or
its seed alias (`original`/`model_original`, `memory`/`model_memory`, `hybrid`/`model`,
`no_feed`/`model_no_feed`) builds from the living `models/model.py`; any other name is a
snapshot module such as `model_1_4_8`. A checkpoint that records its module and config
needs neither; options given on the command line override its config fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from minimind.errors import MinimindError, UsageError
from minimind.lab import Lab
from training import checkpoint as ckpt
from training.runtime import load_model_module

LIVING = "model"
PRESET_NAMES = ("original", "memory", "hybrid", "no_feed", "model_original", "model_memory", "model", "model_no_feed")


def module_and_preset(model_type: str) -> tuple[str, Optional[str]]:
    """(module name, preset or None) for a --model-type value."""
    if model_type in PRESET_NAMES:
        return LIVING, model_type
    if not model_type.replace("_", "").isalnum():
        raise UsageError(f"--model-type {model_type!r}: expected a preset or a module name like model_1_4_8")
    return model_type, None


def _infer_from_weights(state: dict[str, Any]) -> dict[str, Any]:
    """Fields a raw state dict fixes by itself: vocabulary size and (when there) bank shape."""
    out: dict[str, Any] = {}
    emb = state.get("tok_embeddings.weight")
    if emb is not None and hasattr(emb, "shape"):
        out["vocab_size"] = int(emb.shape[0])
    bank = state.get("memory_bank")
    if bank is not None and hasattr(bank, "shape") and len(bank.shape) == 2:
        out["knowledge_num"], out["knowledge_length"] = int(bank.shape[0]), int(bank.shape[1])
    return out


def load_for_eval(lab: Lab, path: Path, model_type: Optional[str], overrides: dict[str, Any]):
    """(model in eval mode, checkpoint dict, module name, model config dict)."""
    data = ckpt.load(path)
    state = ckpt.model_state(data)
    module = data.get("module") if isinstance(data.get("module"), str) else None
    recorded = isinstance(data.get("model_config"), dict)
    config: dict[str, Any] = dict(data["model_config"]) if recorded else _infer_from_weights(state)
    if model_type:
        module, preset = module_and_preset(model_type)
        if preset:
            config["preset"] = preset
    if module is None:
        raise UsageError(f"{path} is a raw state dict: give --model-type (a preset like 'model_original' "
                         f"or a snapshot module like 'model_1_4_8')")
    config.update({k: v for k, v in overrides.items() if v is not None})
    if "preset" not in config and module != LIVING:
        config["preset"] = load_model_module(lab, module).ModelConfig().preset
    from models.registry import load_checkpoint

    try:  # strict load, DDP/compile prefixes stripped, one-line errors
        model, _ = load_checkpoint(path, lab.models_dir, module_name=module, config=config)
    except MinimindError as exc:
        raise MinimindError(f"{exc} (check --model-type and the size options)") from None
    model.eval()
    full = model.config.to_dict() if hasattr(getattr(model, "config", None), "to_dict") else config
    return model, data, module, full
