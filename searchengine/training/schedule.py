"""Learning-rate schedule: a pure function of the step (linear warmup, then cosine to zero)."""

from __future__ import annotations

import math


def learning_rate(step: int, *, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """The rate for optimiser step `step` (0-based) of `total_steps`.

    Warmup climbs linearly to `base_lr` over `warmup_steps` (reaching it at the last warmup step,
    so step 0 never runs at rate 0), then a half cosine falls to 0 at `total_steps`. This is the
    formula of open_clip_train's `cosine_lr`, so the two trainers can be compared step for step.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(step - warmup_steps, decay_steps) / decay_steps
    return 0.5 * (1 + math.cos(math.pi * progress)) * base_lr
