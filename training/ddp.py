"""Multi-process details: which buffers DDP must leave alone, the memory bank, global statistics.

DDP broadcasts every buffer from rank 0 at wrap time and before each forward. Neither
gloo nor NCCL can broadcast int16 or bool tensors, which is what the memory bank and its
freeze mask are, and re-sending a 1M-entry bank every forward would be waste anyway. So
integer and bool buffers are excluded from DDP. Every rank builds the same initial bank
and freeze mask (same file, same seed) or loads them from the same checkpoint, so they
start identical; at each EMA step every rank applies the same update from the gathered
selections of all ranks (`gather_pending`), and rank 0's values of the rows that update
could touch are broadcast (`sync_bank_rows`, widened to int32 for the transport).
Memory statistics are summed over the ranks before they are read (`reduce_memory_window`).
"""

from __future__ import annotations

from typing import Optional

import torch


def ignore_integer_buffers(model) -> list[str]:
    """Mark non-floating buffers as ignored by DDP (call before accelerator.prepare)."""
    names = [name for name, buf in model.named_buffers() if not buf.dtype.is_floating_point]
    if names:
        from torch.nn.parallel import DistributedDataParallel

        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
    return names


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def _all_gather_rows(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's tensor (same trailing shape, any number of rows), in rank order."""
    dist = _dist()
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    most = int(max(int(c) for c in counts))
    padded = tensor.new_zeros((most, *tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    parts = [torch.zeros_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return [part[:int(c)] for part, c in zip(parts, counts)]


def gather_pending(model) -> Optional[torch.Tensor]:
    """Before an EMA update: every memory layer's pending selections become the whole batch's.

    Each rank merges its own (entry ids, query sums, counts), all ranks exchange them, and
    every layer's `pending` becomes the same rank-ordered list on every rank, so the EMA
    moves the bank by the global batch's selections. Returns the selected entry ids (the
    only rows an update may change), or None outside multi-process runs."""
    dist = _dist()
    layers = getattr(model, "memory_layers", None)
    if dist is None or layers is None:
        return None
    touched = []
    for _, layer in layers():
        mine = layer.take_pending()
        device = model.memory_bank.device
        if mine is None:
            dim = layer.norm.weight.shape[0]
            mine = (torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, dim, device=device),
                    torch.zeros(0, dtype=torch.long, device=device))
        ids, sums, counts = mine
        gathered = [_all_gather_rows(ids.long()), _all_gather_rows(sums.float()), _all_gather_rows(counts.long())]
        layer.pending = [part for part in zip(*gathered) if len(part[0])]
        touched.extend(part[0] for part in layer.pending)
    return torch.unique(torch.cat(touched)) if touched else torch.zeros(0, dtype=torch.long)


def sync_bank_rows(model, rows: Optional[torch.Tensor]) -> None:
    """After an EMA update from gathered selections: rank 0's values of the rows it could
    change, so every rank holds the same bank even where float sums differ in the last bit."""
    dist = _dist()
    bank = getattr(model, "memory_bank", None)
    if dist is None or bank is None or rows is None or not len(rows):
        return
    rows = rows.to(bank.device)
    wide = bank[rows].to(torch.int32)
    dist.broadcast(wide, src=0)
    bank[rows] = wide.to(bank.dtype)


def reduce_memory_window(model) -> None:
    """Before memory_stats(): sum every layer's usage counts, entropy sum, token count and
    selection-diversity sums over the ranks, so the statistics (and the memory-entropy
    guardrail) describe the global batch."""
    dist = _dist()
    layers = getattr(model, "memory_layers", None)
    if dist is None or layers is None:
        return
    for _, layer in layers():
        device = layer.usage.device
        dist.all_reduce(layer.usage)
        window = torch.stack([torch.as_tensor(layer.entropy_sum, dtype=torch.float64, device=device).reshape(()),
                              torch.as_tensor(layer.token_count, dtype=torch.float64, device=device).reshape(())])
        dist.all_reduce(window)
        _set_window(layer, "entropy_sum", window[0])
        _set_window(layer, "token_count", window[1])
        if torch.is_tensor(getattr(layer, "selection_sums", None)):  # model files before selection diversity lack it
            dist.all_reduce(layer.selection_sums)


def _set_window(layer, name: str, value: torch.Tensor) -> None:
    """A model that keeps the number in a tensor keeps that tensor (a compiled graph reads it
    in place); older model files hold Python numbers there and get the reduced tensor."""
    current = getattr(layer, name)
    if torch.is_tensor(current):
        current.copy_(value.reshape(current.shape))
    else:
        setattr(layer, name, value)
