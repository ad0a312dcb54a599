"""Device memory of a training configuration, and the micro-batch that fits a budget.

Pure arithmetic (no torch), owned here and used twice: `lifecycle/estimate.py` prints the
estimate before launch and refuses what cannot run; the trainer splits a micro-batch that
would not fit its device into more accumulation steps with the same effective batch
(micro-batch x accumulation x processes), before any data is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# Bytes per parameter while training with AdamW: fp32 weights, gradients, two moments.
TRAIN_BYTES_PER_PARAM = 16
# Activations kept for the backward pass, per token per layer, as a multiple of dim:
# the block's inputs, normed inputs, q/k/v, attention output, FFN/memory intermediates.
ACTIVATION_FLOATS_PER_DIM = 24
# Share of a device's memory a run may plan to use (allocator fragmentation, the CUDA
# context, the data and caches need the rest).
MEMORY_HEADROOM = 0.9


def activation_bytes(precision: str) -> int:
    """Bytes of one kept activation: 2 under bf16/fp16 autocast, 4 in fp32."""
    return 2 if precision in ("bf16", "fp16") else 4


def train_memory(n_params: int, bank_bytes: int, dim: int, n_layers: int, vocab_size: int, batch_tokens: int,
                 precision: str = "no") -> dict[str, int]:
    """Bytes a training step needs on one device, by part (and `total`).

    `logits` counts the logits and their gradient at the activation width; the loss is
    computed over sequence chunks (training.measures.masked_ce) so the fp32 copy of a whole
    batch's logits and its log-softmax never exist at once."""
    width = activation_bytes(precision)
    parts = {
        "parameters_and_optimizer": TRAIN_BYTES_PER_PARAM * n_params,
        "bank": bank_bytes,
        "activations": width * ACTIVATION_FLOATS_PER_DIM * dim * n_layers * batch_tokens,
        "logits": width * 2 * vocab_size * batch_tokens,
    }
    parts["total"] = sum(parts.values())
    return parts


@dataclass(frozen=True)
class MicroBatchPlan:
    batch_size: int            # sequences per micro-batch per process
    accumulation_steps: int
    needed_bytes: int          # of the planned micro-batch
    budget_bytes: Optional[int]
    configured: tuple[int, int]  # (batch_size, accumulation_steps) as the config says
    fits: bool

    @property
    def split(self) -> bool:
        return (self.batch_size, self.accumulation_steps) != self.configured

    def note(self) -> str:
        b, a = self.configured
        gib = 2 ** 30
        budget = "no budget" if self.budget_bytes is None else f"{self.budget_bytes / gib:.2f} GiB budget"
        if self.split:
            head = (f"memory plan: micro-batch {b} x accumulation {a} would not fit the {budget}; "
                    f"split into micro-batch {self.batch_size} x accumulation {self.accumulation_steps} "
                    f"(same effective batch), about {self.needed_bytes / gib:.2f} GiB")
        elif self.budget_bytes is None:
            head = (f"memory plan: micro-batch {b} x accumulation {a}, about {self.needed_bytes / gib:.2f} GiB "
                    "(no device budget: not planned)")
        else:
            head = f"memory plan: micro-batch {b} x accumulation {a}, about {self.needed_bytes / gib:.2f} GiB of the {budget}"
        return head + ("" if self.fits else "; even micro-batch 1 may not fit")

    def as_dict(self) -> dict:
        return {"batch_size": self.batch_size, "accumulation_steps": self.accumulation_steps,
                "configured_batch_size": self.configured[0], "configured_accumulation_steps": self.configured[1],
                "needed_bytes": self.needed_bytes, "budget_bytes": self.budget_bytes, "split": self.split,
                "fits": self.fits}


def plan_micro_batch(batch_size: int, accumulation_steps: int, seq_len: int, budget_bytes: Optional[int],
                     **model) -> MicroBatchPlan:
    """The largest micro-batch dividing `batch_size` whose step fits MEMORY_HEADROOM of the
    budget, the accumulation multiplied to keep batch_size x accumulation_steps. `model`:
    n_params, bank_bytes, dim, n_layers, vocab_size, precision (train_memory's). No budget
    (a CPU run): the configuration as it is."""
    def need(b: int) -> int:
        return train_memory(batch_tokens=b * seq_len, **model)["total"]

    configured = (batch_size, accumulation_steps)
    if budget_bytes is None:
        return MicroBatchPlan(batch_size, accumulation_steps, need(batch_size), None, configured, True)
    limit = MEMORY_HEADROOM * budget_bytes
    for parts in range(1, batch_size + 1):
        if batch_size % parts == 0 and need(batch_size // parts) <= limit:
            micro = batch_size // parts
            return MicroBatchPlan(micro, accumulation_steps * parts, need(micro), budget_bytes, configured, True)
    return MicroBatchPlan(1, accumulation_steps * batch_size, need(1), budget_bytes, configured, False)
