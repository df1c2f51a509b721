"""The one training loop, shared by pretrain, finetune and unlearn.

    for each optimizer step:
        for each of grad_accum micro-batches:
            loss, extras = loss_fn(model, batch)      # stage-specific: LM loss + regularizers, or an unlearning loss
            stop if loss is NaN/inf
            (loss / grad_accum).backward()
        clip gradients to max_grad_norm; regularizer.before_step(...)
        AdamW step; warmup+cosine lr step; regularizer.after_step(...)
        log loss, lr, grad_norm (and the loss_fn's extras) for this step

Regularizers (forgetlab.regularizers) hook in at setup, in the loss, at the optimizer's parameter
groups, after each step and at the end; the loop is the same for all of them.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from forgetlab.qa import collate


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss is NaN or inf; the job stops and writes nothing."""


@dataclass
class TrainConfig:
    epochs: float
    batch_size: int
    lr: float
    max_steps: int | None = None
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 256


@dataclass
class TrainContext:
    """What a regularizer's setup may need to know about the run."""

    total_steps: int
    probe: dict | None = None  # a fixed batch of training examples, e.g. to probe activations


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


class Loader:
    """Endless, seeded, reshuffled-every-epoch batches of pre-encoded examples."""

    def __init__(self, examples: Sequence[dict], batch_size: int, pad_id: int, seed: int, device="cpu"):
        if not examples:
            raise ValueError("no training examples")
        self.examples, self.batch_size, self.pad_id, self.device = examples, batch_size, pad_id, device
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.examples) / self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        while True:
            order = torch.randperm(len(self.examples), generator=self.generator).tolist()
            for i in range(0, len(order), self.batch_size):
                batch = collate([self.examples[j] for j in order[i : i + self.batch_size]], self.pad_id)
                yield {k: v.to(self.device) for k, v in batch.items()}


def paired(primary: Loader, secondary: Loader | None) -> Iterator[dict]:
    """Batches for unlearning: {"forget": ..., "retain": ...}; the forget loader sets the epoch."""
    other = iter(secondary) if secondary is not None else None
    for batch in primary:
        yield {"forget": batch, "retain": next(other) if other is not None else None}


def num_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * batches_per_epoch / cfg.grad_accum))


def lr_lambda(total: int, warmup_ratio: float, min_lr_ratio: float) -> Callable[[int], float]:
    """Linear warmup to the peak lr, then cosine decay to min_lr_ratio * peak."""
    warmup = int(round(warmup_ratio * total))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def train(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]],
    batches: Iterator[dict],
    steps: int,
    cfg: TrainConfig,
    regularizers: Sequence = (),
    log: Callable[[int, dict], None] | None = None,
    desc: str = "train",
    probe: dict | None = None,
) -> torch.nn.Module:
    ctx = TrainContext(total_steps=steps, probe=probe)
    for reg in regularizers:
        model = reg.setup(model, ctx)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": params, "weight_decay": cfg.weight_decay}]
    for reg in regularizers:
        groups = reg.param_groups(model, groups)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps, cfg.warmup_ratio, cfg.min_lr_ratio))

    for step in tqdm(range(steps), desc=desc, mininterval=2.0):
        optimizer.zero_grad(set_to_none=True)
        total, extras = 0.0, {}
        for micro in range(cfg.grad_accum):
            loss, parts = loss_fn(model, next(batches))
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"{desc}: the loss is {loss.item()} at step {step} (micro-batch {micro}); stopping. "
                    "Lower the learning rate or check the data and the method's hyperparameters."
                )
            (loss / cfg.grad_accum).backward()
            total += loss.item() / cfg.grad_accum
            for k, v in parts.items():
                extras[k] = extras.get(k, 0.0) + float(v) / cfg.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        for reg in regularizers:
            reg.before_step(model, step, optimizer)
        optimizer.step()
        scheduler.step()
        for reg in regularizers:
            reg.after_step(model, step, optimizer)
        if log is not None:
            log(step, {"loss": total, "lr": lr, "grad_norm": float(grad_norm), **extras})

    for reg in regularizers:
        model = reg.finalize(model)
    model.eval()
    return model
