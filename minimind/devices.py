"""Where a run trains, at which precision, and how much device memory it may plan for.

One rule, pure, applied to the facts of a machine: the trainer applies it on its own device
(training/runtime.py) and the compute estimate before launch (lifecycle/knowledge/estimate.py), so the
estimate plans the run the trainer will run. No torch here: the facts are asked of a torch
module the caller already imported (`facts_of`), or given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class DeviceFacts:
    cuda: bool                      # a CUDA device is there
    bf16_supported: bool = False    # and it computes in bf16
    memory: Optional[int] = None    # bytes of memory of the first GPU (None: no GPU, or not asked)


def facts_of(torch: Any) -> DeviceFacts:
    """The facts of this machine from a torch module (None: torch not loaded, so no GPU is known)."""
    if torch is None or not torch.cuda.is_available():
        return DeviceFacts(cuda=False)
    return DeviceFacts(cuda=True, bf16_supported=bool(torch.cuda.is_bf16_supported()),
                       memory=int(torch.cuda.get_device_properties(0).total_memory))


def device_kind(cpu: bool, cuda: bool) -> str:
    """'cuda' or 'cpu': launch.cpu, or a machine without CUDA, trains on the CPU."""
    return "cuda" if cuda and not cpu else "cpu"


def resolve_precision(requested: str, *, cuda: bool, bf16_supported: bool, cpu: bool) -> str:
    """launch.mixed_precision as accelerate takes it.

    `auto` (the default of new labs) is bf16 autocast on a CUDA device that supports bf16,
    else fp32 ("no"); an explicit value (an older lab's 'no' included) is kept as written."""
    if requested != "auto":
        return requested
    return "bf16" if cuda and not cpu and bf16_supported else "no"


def memory_budget(budget_gb: float, kind: str, gpu_memory: Optional[int]) -> Optional[int]:
    """Bytes a process may plan for: launch.memory_budget_gb, else the GPU's memory; a CPU
    run without a budget is not planned (None)."""
    if budget_gb:
        return int(budget_gb * 2 ** 30)
    return gpu_memory if kind == "cuda" else None
