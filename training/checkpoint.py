"""What the trainer puts into a checkpoint beyond the model, and how it is restored.

The file format, the one writer and the one reader are `models.registry`'s
(`save_checkpoint`, `read_checkpoint`, `load_weights`); this module only assembles the
trainer's payloads:
  best (checkpoints/pretrain_{dim}.pth)  module, model_config, model, step, best
  last (checkpoints/last.pth)            the same, plus everything an exact resume needs:
    optimizer, scheduler      their state_dicts
    step, epoch, micro_index  optimizer steps done; the data position follows from them
    rng                       python, numpy, torch (and cuda) generator states
    best                      {"metric": "val_loss"|"train_loss_smoothed", "value", "step"}
    memory_pending            the memory layers' EMA sums since the last EMA update
    total_steps, split, config, elapsed_s
Only tensors and plain data, so it loads with torch.load(weights_only=True).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np


def model_part(module: str, model, state_dict: dict[str, Any] | None = None) -> dict[str, Any]:
    """module, model_config and model: what every checkpoint holds.

    state_dict is given when the engine must gather it (DeepSpeed shards the weights).
    """
    return {"module": module, "model_config": model.config.to_dict(),
            "model": model.state_dict() if state_dict is None else state_dict}


def best_payload(base: dict[str, Any], step: int, best: dict[str, Any]) -> dict[str, Any]:
    """The kept model: `base` (model_part) and the step and metric that made it the best."""
    return {**base, "step": step, "best": best}


def last_payload(base: dict[str, Any], model, optimizer, scheduler, *, step: int, accumulation_steps: int,
                 batches_per_epoch: int, total_steps: int, best: Any, config: dict[str, Any], split: str,
                 elapsed_s: float) -> dict[str, Any]:
    """Everything an exact resume needs: `base` (model_part) and the state of the run.

    `model` is the unwrapped model (its memory layers' pending EMA sums are saved)."""
    return {
        **base,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "step": step, "epoch": step * accumulation_steps / batches_per_epoch,
        "micro_index": step * accumulation_steps, "total_steps": total_steps,
        "rng": rng_state(), "best": best, "config": config,
        "memory_pending": memory_pending(model), "split": split, "elapsed_s": elapsed_s,
    }


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
