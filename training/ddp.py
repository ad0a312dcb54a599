"""Multi-process details: which buffers DDP must leave alone, and syncing the memory bank.

DDP broadcasts every buffer from rank 0 at wrap time and before each forward. Neither
gloo nor NCCL can broadcast int16 or bool tensors, which is what the memory bank and its
freeze mask are, and re-sending a 1M-entry bank every forward would be waste anyway. So
integer and bool buffers are excluded from DDP; the bank (the only one that changes, at
EMA steps) is broadcast from rank 0 right after each EMA update, widened to int32 for
the transport. Every rank builds the same initial bank and freeze mask (same file, same
seed) or loads them from the same checkpoint, so they start identical.
"""

from __future__ import annotations

import torch


def ignore_integer_buffers(model) -> list[str]:
    """Mark non-floating buffers as ignored by DDP (call before accelerator.prepare)."""
    names = [name for name, buf in model.named_buffers() if not buf.dtype.is_floating_point]
    if names:
        from torch.nn.parallel import DistributedDataParallel

        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
    return names


def sync_memory_bank(model) -> None:
    """Broadcast rank 0's memory bank to every process (after an EMA update)."""
    import torch.distributed as dist

    bank = getattr(model, "memory_bank", None)
    if bank is None or not dist.is_available() or not dist.is_initialized():
        return
    wide = bank.to(torch.int32)
    dist.broadcast(wide, src=0)
    bank.copy_(wide.to(bank.dtype))
