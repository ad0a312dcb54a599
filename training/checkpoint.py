"""What the trainer puts into a checkpoint beyond the model, and how it is restored.

The file format, the one writer and the one reader are `models.registry`'s
(`save_checkpoint`, `read_checkpoint`, `load_weights`); this module only assembles the
trainer's payloads:
  best (checkpoints/pretrain_{dim}.pth)  module, model_config, model, step, best
  last (checkpoints/last.pth)            the same, plus everything an exact resume needs:
    optimizer, scheduler      their state_dicts
    step, epoch, micro_index  optimizer steps done; the data position follows from them
    rng                       rank 0's python, numpy, torch and own-device cuda generator states
    best                      {"metric": "val_loss"|"train_loss_smoothed", "value", "step"}
    memory_pending            rank 0's memory-layer EMA sums since the last EMA update
    total_steps, split, config, elapsed_s
    num_processes, tag        how many processes wrote it; the tag of its companion files
    state_digest              several processes: sha256 of rank 0's weights and bank (every
                              rank file holds its own; they must be equal)
    deepspeed                 true when the optimizer state is DeepSpeed's (then optimizer is None)
Companions, written by every rank before rank 0 writes last.pth (so last.pth names only
complete sets; older tags are removed after it):
  checkpoints/rank{r}.{tag}.pth     rank r >= 1: its rng and memory_pending
  checkpoints/deepspeed/{tag}/      DeepSpeed's own checkpoint: the fp32 masters and every
                                    rank's ZeRO optimizer shard (engine.save_checkpoint)
Under DeepSpeed the `model` weights of both payloads are the optimizer's fp32 masters
(`master_state_dict`), not the bf16 copies the engine computes with: evaluation reads them,
and a resume starts from them before DeepSpeed restores its own state.
Old single-process checkpoints have no num_processes, tag or companions: they resume with
one process, as they were written.
Only tensors and plain data, so it loads with torch.load(weights_only=True).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np


def model_part(module: str, model, state_dict: dict[str, Any] | None = None) -> dict[str, Any]:
    """module, model_config and model: what every checkpoint holds.

    state_dict is given when the engine must gather it (DeepSpeed: `master_state_dict`).
    """
    return {"module": module, "model_config": model.config.to_dict(),
            "model": model.state_dict() if state_dict is None else state_dict}


def master_state_dict(module) -> dict[str, Any]:
    """Under DeepSpeed: the module's state dict with every parameter as the optimizer's fp32
    master (DeepSpeed computes with bf16 copies; evaluation and resume want what the
    optimizer holds, not the copies rounded to bf16). ZeRO-1/2 keep the masters partitioned,
    so assembling them is a collective: every rank calls this, in the same order."""
    from deepspeed.utils import safe_get_full_fp32_param

    masters = {}
    for param in module.parameters():  # shared (tied) parameters once
        full = safe_get_full_fp32_param(param)
        masters[id(param)] = param.detach() if full is None else full.detach().view_as(param)
    state = module.state_dict()
    for name, param in module.named_parameters(remove_duplicate=False):
        if name in state:
            state[name] = masters[id(param)].float().cpu()
    return state


def best_payload(base: dict[str, Any], step: int, best: dict[str, Any]) -> dict[str, Any]:
    """The kept model: `base` (model_part) and the step and metric that made it the best."""
    return {**base, "step": step, "best": best}


def last_payload(base: dict[str, Any], model, optimizer, scheduler, *, step: int, accumulation_steps: int,
                 batches_per_epoch: int, total_steps: int, best: Any, config: dict[str, Any], split: str,
                 elapsed_s: float, num_processes: int = 1, deepspeed: bool = False) -> dict[str, Any]:
    """Everything an exact resume needs: `base` (model_part) and the state of the run.

    `model` is the unwrapped model (its memory layers' pending EMA sums are saved);
    `optimizer` is None under DeepSpeed, whose own checkpoint holds the shards."""
    return {
        **base,
        "optimizer": None if optimizer is None else optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "num_processes": num_processes, "tag": tag_of(step), "deepspeed": deepspeed,
        "state_digest": state_digest(model) if num_processes > 1 else None,
        "step": step, "epoch": step * accumulation_steps / batches_per_epoch,
        "micro_index": step * accumulation_steps, "total_steps": total_steps,
        "rng": rng_state(), "best": best, "config": config,
        "memory_pending": memory_pending(model), "split": split, "elapsed_s": elapsed_s,
    }


def tag_of(step: int) -> str:
    return f"step{int(step)}"


def rank_file(ckpt_dir: Path, rank: int, tag: str) -> Path:
    return Path(ckpt_dir) / f"rank{rank}.{tag}.pth"


DEEPSPEED_DIR = "deepspeed"


def rank_payload(model) -> dict[str, Any]:
    """What differs between ranks besides the optimizer shard: RNG and pending EMA sums; and the
    digest of this rank's weights and bank, which must equal rank 0's."""
    return {"rng": rng_state(), "memory_pending": memory_pending(model), "state_digest": state_digest(model)}


def state_digest(model) -> str:
    """sha256 over every parameter and buffer of the state dict (names, dtypes, bytes)."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_rank_state(path: Path, model) -> None:
    """A rank file, atomically (a crash mid-write leaves no half file under the name)."""
    import torch

    from minimind.atomic import atomic_open

    with atomic_open(path, "wb", encoding=None) as handle:
        torch.save(rank_payload(model), handle)


def processes_of(data: dict[str, Any]) -> int:
    """How many processes wrote a last.pth (checkpoints before this field: one)."""
    return int(data.get("num_processes") or 1)


def remove_stale(ckpt_dir: Path, keep_tag: str) -> None:
    """Companion files of tags other than the one last.pth names (rank 0, after writing it)."""
    ckpt_dir = Path(ckpt_dir)
    for path in ckpt_dir.glob("rank*.step*.pth"):
        if path.name.split(".")[1] != keep_tag:
            path.unlink(missing_ok=True)
    ds_dir = ckpt_dir / DEEPSPEED_DIR
    if ds_dir.is_dir():
        for child in ds_dir.iterdir():
            if child.is_dir() and child.name != keep_tag:
                shutil.rmtree(child, ignore_errors=True)
            elif child.is_file() and child.name == "latest":
                child.unlink(missing_ok=True)  # last.pth names the tag; DeepSpeed's pointer is not used


def rng_state() -> dict[str, Any]:
    """This process's generators; for CUDA only its own device's (a resume may see other GPUs)."""
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    # plain lists, not numpy arrays: the file then loads with weights_only=True (no code)
    state = {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_device"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if not torch.cuda.is_available():
        return
    if "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"])
    elif state.get("cuda"):
        # older checkpoints saved every visible device's state; this process uses its current one
        own: Optional[Any] = None
        index = torch.cuda.current_device()
        if index < len(state["cuda"]):
            own = state["cuda"][index]
        if own is not None:
            torch.cuda.set_rng_state(own)


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
