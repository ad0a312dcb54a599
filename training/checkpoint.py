"""Training checkpoints: everything needed to resume exactly, written atomically.

A checkpoint is one `torch.save` dict:
  module, model_config      which snapshot module and ModelConfig built the model
  model                     state_dict, incl. buffers (memory bank token ids, freeze
                            mask, usage counts) the model registers
  optimizer, scheduler      their state_dicts
  step, epoch, micro_index  optimizer steps done; the data position follows from them
  rng                       python, numpy, torch (and cuda) generator states
  best                      {"metric": "val_loss"|"train_loss_smoothed", "value", "step"}
  memory_pending            the memory layers' EMA sums since the last EMA update
  format, total_steps, split, config, elapsed_s, time
Only tensors and plain data, so it loads with torch.load(weights_only=True) and
models.registry.load_checkpoint reads it.
Written to a temporary sibling then renamed, so a crash mid-save keeps the old file.
"""

from __future__ import annotations

import pickle
import random
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from minimind.errors import MinimindError

CHECKPOINTS = "checkpoints"
LAST = "last.pth"
FORMAT = "minimind-checkpoint-1"  # models.registry's format: its load_checkpoint reads ours


def best_name(dim: int) -> str:
    """MiniMind's name for the kept model: pretrain_{dim}.pth."""
    return f"pretrain_{dim}.pth"


def rng_state() -> dict[str, Any]:
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    # plain lists, not numpy arrays: the file then loads with weights_only=True (no code)
    state = {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(obj: Any) -> Any:
    """random.setstate wants tuples where a round trip may have produced lists."""
    return tuple(_tuples(x) for x in obj) if isinstance(obj, (list, tuple)) else obj


def save(path: Path, payload: dict[str, Any]) -> None:
    """torch.save through an atomic write: a crash mid-save leaves the previous checkpoint."""
    import torch

    from minimind.atomic import atomic_open

    with atomic_open(path, "wb") as handle:
        torch.save(dict(payload, format=FORMAT, time=time.time()), handle)


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint (ours or a raw state dict); MinimindError with one line if it is bad."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise MinimindError(f"checkpoint {path} not found")
    try:
        # Tensors and plain data only: a checkpoint can never run code when loaded.
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError,
            zipfile.BadZipFile, AttributeError, ImportError, IndexError, KeyError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise MinimindError(f"checkpoint {path} is truncated or corrupt ({detail}); "
                            f"resume from another checkpoint or retrain") from None
    if not isinstance(data, dict):
        raise MinimindError(f"checkpoint {path} does not hold a state dict")
    return data


def model_state(data: dict[str, Any]) -> dict[str, Any]:
    """The weights inside a checkpoint, whichever layout wrote it."""
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(data.get(key), dict):
            return data[key]
    return data  # a raw MiniMind-style state dict


def memory_pending(model) -> list[Any] | None:
    """The memory layers' EMA query sums since the last EMA update (not in state_dict).

    Saved so a resume between two EMA updates applies the same update as an uninterrupted
    run would; None for models without memory layers. The structure is the model's own
    (opaque here): it is saved and restored as it is.
    """
    layers = getattr(model, "memory_layers", None)
    if layers is None:
        return None
    return [getattr(layer, "pending", None) for _, layer in layers()]


def set_memory_pending(model, pending: list[Any] | None, device) -> None:
    layers = getattr(model, "memory_layers", None)
    if layers is None or pending is None:
        return
    for (_, layer), value in zip(layers(), pending):
        if hasattr(layer, "pending"):
            layer.pending = _to_device(value, device)


def _to_device(obj: Any, device) -> Any:
    """Move tensors inside nested lists/tuples/dicts, keeping the structure the model uses."""
    if hasattr(obj, "to") and hasattr(obj, "dtype"):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(x, device) for x in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj
