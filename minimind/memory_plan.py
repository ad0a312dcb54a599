"""Device memory of a training configuration, and the micro-batch that fits a budget.

Pure arithmetic (no torch), owned here and used twice: `lifecycle/knowledge/estimate.py` prints the
estimate before launch and refuses what cannot run; the trainer splits a micro-batch that
would not fit its device into more accumulation steps with the same effective batch
(micro-batch x accumulation x processes), before any data is read.

The per-token activation counts are not guesses: each term below is a tensor that autograd
keeps for backward, read off a saved-tensor measurement of the model (training/saved_memory.py,
`python -m training.saved_memory --preset P`), and tests/test_memory_plan.py reruns that
measurement for every preset at MiniMind2 size and holds these formulas to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

# Bytes per parameter while training with AdamW: fp32 weights, gradients, two moments.
TRAIN_BYTES_PER_PARAM = 16
# Share of a device's memory a run may plan to use (allocator fragmentation, the CUDA
# context, the data and caches need the rest).
MEMORY_HEADROOM = 0.9
# models/model.py EMA_MAX_PENDING: entries per memory layer whose query sums the EMA store
# holds between updates (tests/test_memory_plan.py checks the two agree).
EMA_MAX_PENDING = 32768

# training.measures.CE_CHUNK_ELEMENTS: fp32 logits per chunk of the loss, whose forward holds
# about four such fp32 tensors at once (the chunk, its exp, that times the weights, a cast):
# a fixed workspace, the 0.28 GiB a card measured beside the plan (docs/PERFORMANCE.md).
LOSS_CHUNK_ELEMENTS = 1 << 24

# `spec` below is the preset's block layout, an object with `feed_forward` and `memory` (the
# model module's BlockSpec, from models/registry.py): the model module owns its presets, and this
# foundation module cannot import it.


def ffn_hidden(m: dict) -> int:
    """The FFN's hidden width of a model config dict (models/model.py ModelConfig.ffn_hidden_dim)."""
    if m.get("hidden_dim") is not None:
        return int(m["hidden_dim"])
    hidden, multiple = int(2 * 4 * m["dim"] / 3), m.get("multiple_of", 64)
    return multiple * ((hidden + multiple - 1) // multiple)


def bank_width(m: dict) -> int:
    """Bytes of one token id in the bank (models/model.py bank_dtype: int16 when the vocabulary fits)."""
    return 2 if m["vocab_size"] <= 32767 else 4


def bank_bytes(m: dict, spec) -> int:
    """The bank (token ids) and its freeze mask; 0 without memory."""
    if not spec.memory:
        return 0
    return m["knowledge_num"] * (m["knowledge_length"] * bank_width(m) + 1)


def activation_bytes(precision: str) -> int:
    """Bytes of one kept activation: 2 under bf16/fp16 autocast, 4 in fp32."""
    return 2 if precision in ("bf16", "fp16") else 4


def layer_bytes_per_token(m: dict, spec, precision: str) -> int:
    """Bytes one transformer block keeps for backward per token, by its parts.

    Under autocast the residual stream and RMSNorm's work stay fp32 (4 bytes), each Linear
    keeps its own bf16 copy of an fp32 input, and the other activations are bf16 (`w`)."""
    feed_forward, memory = spec.feed_forward, spec.memory
    d, w, cast = m["dim"], activation_bytes(precision), precision in ("bf16", "fp16")

    def norm_of_fp32():  # RMSNorm of the fp32 residual: input, 1/rms, normalised
        return 8 * d + 4

    def inputs_of(linears: int) -> int:  # the normalised (fp32) input of `linears` projections
        return linears * 2 * d if cast else 4 * d

    # attention: q/k/v input copies; SDPA's q, k and v (repeated to n_heads), output; log-sum-exp
    total = norm_of_fp32() + inputs_of(3) + 4 * w * d + 4 * m["n_heads"]
    if feed_forward:
        swiglu = inputs_of(2) + 4 * w * ffn_hidden(m)  # w1 and w3 inputs; their outputs, silu's, the product
        if m.get("use_moe"):
            k = m["num_experts_per_tok"]
            router = (2 * d if cast else 0) + w * m["n_routed_experts"] + 8 * k + w * (k + 1)  # input, scores, choice
            routed = swiglu + w * d + 4 * d  # each of a token's k experts: its SwiGLU, output, weighted output
            total += norm_of_fp32() + router + k * routed + m.get("n_shared_experts", 0) * swiglu
        else:
            total += norm_of_fp32() + swiglu
    if memory:
        kd, c, cl = m["knowledge_dim"], m["num_candidates"], m["num_candidates"] * m["knowledge_length"]
        total += (4 * d + 4 + w * d        # RMSNorm of the attention output (fp32 copy, 1/rms, normalised)
                  + inputs_of(2)          # query and gate inputs
                  + w * kd                # the query halves (models/model.py SubKeyScores)
                  + 28 * c                # int32 sub-key and int64 candidate indices, entry lengths, fp32 weights
                  + bank_width(m) * cl    # the bag's token ids, in the bank's dtype (WeightedBagSum)
                  + w * cl                # the bag's per-token weights
                  + 5 * w * kd)           # the SwiGLU fusion: read, gate output, silu, up output, product
    return total


def head_bytes_per_token(m: dict, precision: str) -> int:
    """Bytes kept per token outside the blocks: input ids, the final RMSNorm, the output
    projection's input, and the chunked loss's gradient of the logits, in the logits' dtype
    (bf16 under autocast: the trainer keeps accelerate from converting them to fp32)."""
    d, w, cast = m["dim"], activation_bytes(precision), precision in ("bf16", "fp16")
    return 8 + 8 * d + 4 + (2 * d if cast else 4 * d) + w * m["vocab_size"]


def memory_state_bytes(m: dict, spec) -> int:
    """What each memory layer holds besides parameters: the EMA store (ids, fp32 query sums,
    counts: capacity + 1 slots) and the statistics window's int32 usage counts."""
    if not spec.memory:
        return 0
    slots = min(EMA_MAX_PENDING, m["knowledge_num"]) + 1
    return m["n_layers"] * (slots * (4 * m["dim"] + 8 + 8) + 4 * m["knowledge_num"])


def train_memory(m: dict, spec, n_params: int, batch_tokens: int, precision: str = "no") -> dict[str, int]:
    """Bytes a training step needs on one device, by part (and `total`), for the model
    config dict `m` (ModelConfig's fields, as config.yaml holds them) of block layout `spec`.

    `activations` is everything autograd keeps at the end of the forward (the logits'
    gradient included: the chunked loss, training.measures.masked_ce, computes it in the
    forward and never holds a whole batch's fp32 logits). `transient` is the largest tensor
    beside them at the peak: the logits themselves (or, in backward, their gradient times
    the loss's), or the (2, N, sqrt(knowledge_num)) fp32 gradient a memory layer's sub-key
    scoring builds in its backward, whichever is larger; on an H200 the step's peak came in
    the loss's forward, at this plan plus the loss's fixed fp32 workspace, within 1%."""
    w, cast = activation_bytes(precision), precision in ("bf16", "fp16")
    per_token = m["n_layers"] * layer_bytes_per_token(m, spec, precision) + head_bytes_per_token(m, precision)
    sub_key_grad = 8 * math.isqrt(m["knowledge_num"]) if spec.memory else 0
    parts = {
        "parameters_and_optimizer": TRAIN_BYTES_PER_PARAM * n_params,
        "autocast_weight_copies": 2 * n_params if cast else 0,  # kept for backward by each Linear
        "bank": bank_bytes(m, spec),
        "memory_state": memory_state_bytes(m, spec),
        "activations": per_token * batch_tokens,
        "transient": max(w * m["vocab_size"], sub_key_grad) * batch_tokens,
        "loss_workspace": 4 * 4 * min(LOSS_CHUNK_ELEMENTS, batch_tokens * m["vocab_size"]),
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


def plan_micro_batch(batch_size: int, accumulation_steps: int, budget_bytes: Optional[int], m: dict, spec,
                     n_params: int, precision: str = "no") -> MicroBatchPlan:
    """The largest micro-batch dividing `batch_size` whose step fits MEMORY_HEADROOM of the
    budget, the accumulation multiplied to keep batch_size x accumulation_steps; sequences
    of m["max_seq_len"] tokens (what real pretraining data fills). No budget (a CPU run):
    the configuration as it is."""
    def need(b: int) -> int:
        return train_memory(m, spec, n_params, b * m["max_seq_len"], precision)["total"]

    configured = (batch_size, accumulation_steps)
    if budget_bytes is None:
        return MicroBatchPlan(batch_size, accumulation_steps, need(batch_size), None, configured, True)
    limit = MEMORY_HEADROOM * budget_bytes
    for parts in range(1, batch_size + 1):
        if batch_size % parts == 0 and need(batch_size // parts) <= limit:
            micro = batch_size // parts
            return MicroBatchPlan(micro, accumulation_steps * parts, need(micro), budget_bytes, configured, True)
    return MicroBatchPlan(1, accumulation_steps * batch_size, need(1), budget_bytes, configured, False)
