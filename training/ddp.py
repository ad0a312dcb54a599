"""Multi-process details: which buffers DDP must leave alone, the memory bank, global statistics.

DDP broadcasts every buffer from rank 0 at wrap time and before each forward. Neither
gloo nor NCCL can broadcast int16 or bool tensors, which is what the memory bank and its
freeze mask are, and re-sending a 1M-entry bank every forward would be waste anyway. So
integer and bool buffers are excluded from DDP. Every rank builds the same initial bank
and freeze mask (same file, same seed) or loads them from the same checkpoint, so they
start identical; at each EMA step every rank applies the same update from the summed
selections of all ranks (`reduce_pending`: a reduction that costs about one store per rank,
whatever the number of ranks), and rank 0's values of the rows that update
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


def reduce_pending(model) -> Optional[torch.Tensor]:
    """Before an EMA update: every memory layer's pending selections become the whole batch's.

    A reduction, not an all-gather, so a rank receives at most about one store's worth
    whatever the number of processes: per layer, the selection counts over the bank
    (knowledge_num int32, summed over ranks) say which entries any rank selected; the
    `capacity` most selected of them (all of them, unless the stores overflowed) get one
    row each in a (U, dim) fp32 table that every rank fills with its own query sums and
    that is summed over ranks. Every layer's store then holds the same global (ids, sums,
    counts) on every rank, so the EMA moves the bank by the global batch's selections.
    Returns the selected entry ids (the only rows an update may change), or None outside
    multi-process runs."""
    dist = _dist()
    layers = getattr(model, "memory_layers", None)
    if dist is None or layers is None:
        return None
    touched = []
    for _, layer in layers():
        ids, sums, counts = _reduced_store(dist, layer, model.config.knowledge_num, model.memory_bank.device)
        layer.pending = [(ids, sums, counts)] if len(ids) else []
        touched.append(ids)
    return torch.unique(torch.cat(touched))


def _reduced_store(dist, layer, entries: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(entry ids ascending, summed query inputs, summed counts) of one layer over all ranks;
    empties this rank's store. Reads one number from the device (how many entries)."""
    mine = layer.take_pending()
    capacity = getattr(layer, "capacity", entries)
    selected = torch.zeros(entries, dtype=torch.int32, device=device)
    if mine is not None:
        selected.index_add_(0, mine[0].to(device), mine[2].to(device=device, dtype=torch.int32))
    dist.all_reduce(selected)
    held = int((selected > 0).sum())
    if held > capacity:  # more than a store holds: the most selected keep their place, as in one store
        ids = selected.long().topk(capacity).indices.sort().values
    else:
        ids = selected.nonzero().squeeze(1)
    table = torch.zeros(len(ids), layer.norm.weight.shape[0], dtype=torch.float32, device=device)
    if mine is not None and len(ids):
        mine_ids, mine_sums = mine[0].to(device), mine[1].to(device=device, dtype=torch.float32)
        row = torch.searchsorted(ids, mine_ids).clamp(max=len(ids) - 1)
        kept = ids[row] == mine_ids  # entries dropped for capacity add nothing
        table.index_add_(0, row[kept], mine_sums[kept])
    dist.all_reduce(table)
    return ids, table, selected[ids].long()


def sync_bank_rows(model, rows: Optional[torch.Tensor]) -> None:
    """After an EMA update from the summed selections: rank 0's values of the rows it could
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
