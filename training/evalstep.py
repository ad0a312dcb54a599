"""The trainer's periodic evaluation: validation loss, inference loss, repetition.

A smaller cousin of `training.evaluate` (no recall, no samples, no sampling), run on
rank 0 with the unwrapped model. It uses no random numbers, so running it never changes
what the resumed run would compute.
"""

from __future__ import annotations

from typing import Any, Optional

from minimind.config import ExperimentConfig
from training import measures
from training.textstats import repetition_rate


def eval_pairs(docs, cfg: ExperimentConfig) -> list[tuple[list[int], list[int]]]:
    max_seq_len = int(cfg.model.get("max_seq_len", 512))
    pairs = [measures.split_prompt(d, cfg.eval.prompt_tokens, max_seq_len) for d in docs[: cfg.eval.num_samples]]
    return [(p, r) for p, r in pairs if p and r]


def periodic_eval(model, val_docs, cfg: ExperimentConfig, train_loss: Optional[float]) -> dict[str, Any]:
    """{"eval/val_loss", "eval/inference_loss", "eval/train_inference_ratio",
    "eval/repetition_rate", "eval/memory_entropy"} (None where unavailable)."""
    max_seq_len = int(cfg.model.get("max_seq_len", 512))
    stats = getattr(model, "memory_stats", None)
    if stats:
        stats(reset=True)  # drop training reads so the entropy below is the eval's own
    val = measures.val_loss(model, val_docs, max_seq_len, cfg.train.batch_size, cfg.eval.max_val_batches)
    memory = stats(reset=True) if stats else {}
    pairs = eval_pairs(val_docs, cfg)
    inference = measures.inference_loss(model, pairs)
    greedy = measures.continuations(model, [p for p, _ in pairs], cfg.eval.max_new_tokens)
    ratio = inference / train_loss if inference is not None and train_loss else None
    return {
        "eval/val_loss": val,
        "eval/inference_loss": inference,
        "eval/train_inference_ratio": ratio,
        "eval/repetition_rate": repetition_rate(greedy, 4),
        "eval/memory_entropy": memory.get("entropy") if memory else None,
    }
