"""Learning-rate schedule: linear warm-up, then cosine decay to `min_lr_ratio` of the peak.

A pure function of the step so that resume reproduces it exactly; `make_scheduler`
wraps it in a LambdaLR whose state (the step) goes into the checkpoint.
"""

from __future__ import annotations

import math


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine


class _Factor:
    """Picklable closure for LambdaLR (a lambda would not survive state_dict)."""

    def __init__(self, total_steps: int, warmup_steps: int, min_lr_ratio: float):
        self.total_steps, self.warmup_steps, self.min_lr_ratio = total_steps, warmup_steps, min_lr_ratio

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.warmup_steps, self.min_lr_ratio)


def make_scheduler(optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float):
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, _Factor(total_steps, warmup_steps, min_lr_ratio))


def make_optimizer(model, learning_rate: float, weight_decay: float):
    """AdamW (betas 0.9/0.95); weight decay on matrices only, never on norms or biases."""
    import torch

    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.95))
