"""The learning-rate schedule: linear warm-up, then step decay (x0.1 at the preset's
decay epochs, scaled to the run) or a cosine to zero; a function of the step alone, so
that a resumed run continues it exactly."""

import math
from typing import Sequence

import torch


def learning_rate_factor(
    step: int,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: float,
    schedule: str,
    decay_epochs: Sequence[int],
    gamma: float = 0.1,
) -> float:
    """The factor of the peak learning rate at ``step`` (0-based)."""
    warmup_steps = warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "cosine":
        total = max(epochs * steps_per_epoch - warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / total)))
    epoch = step // steps_per_epoch
    return gamma ** sum(epoch >= e for e in decay_epochs)


def make_scheduler(
    optimizer, steps_per_epoch: int, epochs: int, warmup_epochs: float, schedule: str, decay_epochs: Sequence[int]
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: learning_rate_factor(step, steps_per_epoch, epochs, warmup_epochs, schedule, decay_epochs),
    )
