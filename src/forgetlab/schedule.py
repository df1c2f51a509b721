"""The training loop's optimizer settings and learning-rate schedules (TrainConfig's `schedule`,
`warmup_ratio`, `min_lr_ratio`, `betas`, `weight_decay`).

With T total optimizer steps, W = round(warmup_ratio * T) warm-up steps, m = min_lr_ratio and
p = min(1, (step - W) / max(1, T - W)) the progress after warm-up, the multiplier of the peak lr is

    step < W:   (step + 1) / W                      (linear warm-up, reaching the peak at step W - 1)
    cosine:     m + (1 - m) * (1 + cos(pi * p)) / 2
    linear:     m + (1 - m) * (1 - p)
    constant:   1

With m = 0 and for every step >= W these are Hugging Face's get_cosine_schedule_with_warmup,
get_linear_schedule_with_warmup (lr_scheduler_type `cosine`, `linear`) and `constant_with_warmup`
(`constant` when W = 0). The one deliberate difference: HF's warm-up is step / W, so its step 0 runs
at lr 0 (it only moves AdamW's moment estimates); ours starts at 1/W and reaches the peak a step
earlier. This keeps every existing pretrain/finetune run exactly as it was (they were trained with
this warm-up); there is no switch for HF's variant.
"""

from __future__ import annotations

import math
from typing import Callable

SCHEDULES = ("cosine", "linear", "constant")


def lr_lambda(total: int, warmup_ratio: float, min_lr_ratio: float, schedule: str = "cosine") -> Callable[[int], float]:
    """The lr multiplier at each optimizer step (torch.optim.lr_scheduler.LambdaLR)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    warmup = int(round(warmup_ratio * total))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
        return min_lr_ratio + (1 - min_lr_ratio) * decay

    return f
