"""The one training loop, shared by pretrain, finetune and unlearn.

    for each optimizer step:
        for each of grad_accum micro-batches:
            loss, extras = loss_fn(model, batch)      # stage-specific: LM loss + regularizers, or an unlearning loss
            stop if loss is NaN/inf
            (loss / grad_accum).backward()
        clip gradients to max_grad_norm; hook.before_step(...)
        AdamW step (betas, weight_decay); lr schedule step; hook.after_step(...)
        log loss, lr, grad_norm (and the loss_fn's extras) for this step

The lr schedule (warm-up, then cosine / linear / constant; forgetlab.schedule), AdamW's betas and
weight decay are TrainConfig keys; their defaults are the settings pretrain and finetune always had.

The hooks (regularizers, an unlearning method and its plug-ins, the unlearning trajectory) are
called as forgetlab.hooks describes; the loop is the same for all of them.

The forward pass and the loss run under `precision`'s autocast (forgetlab.model.autocast: bf16 on a
CUDA device that supports it with `auto`); weights, gradients and the optimizer state stay float32.
With a `checkpoint` (forgetlab.checkpoint.Checkpointer) the loop saves its whole state every
`checkpoint_every` steps and on SIGTERM (then exits with status 143), and resumes from a saved one.
With `strategy="fsdp"` in a data-parallel run the model (and a hook's frozen `reference` model,
an unlearning method's) is sharded after the hooks' setup (forgetlab.distributed.shard_model) and
FSDP reduces the gradients; "ddp" averages them by hand.
"""

from __future__ import annotations

import math
import os
import random
import weakref
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from forgetlab import distributed
from forgetlab.checkpoint import Checkpointer, CheckpointError, StepLog, preempt, restore, snapshot
from forgetlab.hooks import Hooks
from forgetlab.model import autocast, autocast_dtype
from forgetlab.qa import collate
from forgetlab.schedule import lr_lambda


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
    checkpoint_every: int = 0  # optimizer steps between checkpoints (0: only on SIGTERM)
    schedule: str = "cosine"  # after warm-up: cosine | linear (decay to min_lr_ratio * lr) | constant
    betas: tuple[float, float] | list = (0.9, 0.95)  # AdamW's (beta1, beta2)
    group_by_length: bool = False  # batches of similar-length examples (Loader); False: plain shuffled batches
    length_megabatch: int = 50  # group_by_length sorts within runs of length_megabatch * batch_size examples
    fused_adamw: bool = False  # torch's fused AdamW kernel (HF Trainer's default): faster, not bit-identical
    supervised_logits: bool = False  # LM loss: the LM head only at supervised positions; faster, not bit-identical
    token_weighted: bool = False  # finetune's LM loss: every supervised token weighs the same, whatever its batch
    sync_every: int | None = None  # optimizer steps between host syncs (loss check, logging); None: 1 on CPU, 16 else

    def __post_init__(self):  # the ranges of these settings: the study config's schema ($defs/train)
        self.betas = tuple(float(b) for b in self.betas)


@dataclass
class TrainContext:
    """What a regularizer's setup may need to know about the run."""

    total_steps: int
    probe: dict | None = None  # a fixed batch of training examples, e.g. to probe activations
    # unlearning: independent loaders over the forget and retain splits, for hooks that need
    # batches of their own (e.g. a gradient-saliency mask), so the training order is untouched
    forget: "Loader | None" = None
    retain: "Loader | None" = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


class Loader:
    """Endless, seeded, reshuffled-every-epoch batches of pre-encoded examples.

    An example is one encoding ({"input_ids", "labels"}), or a dict of named views of the same
    row (e.g. {"forget": qa, "idk": refusal}); a batch of the latter is a dict of padded views.
    Each `iter(loader)` is a new `Batches` iterator that starts a new epoch; all of them draw their
    permutations from the loader's one seeded generator. `state_dict` is that generator's state.

    Each batch is padded to its own longest example. With `group_by_length` an epoch is a random
    permutation cut into runs of `megabatch` * batch_size examples, each run sorted by length
    (longest first) and cut into batches, and the full batches then shuffled (the one short batch,
    if any, stays last), so a batch holds examples of similar length and little padding.
    """

    def __init__(self, examples: Sequence[dict], batch_size: int, pad_id: int, seed: int, device="cpu",
                 group_by_length: bool = False, megabatch: int = 50):
        if not examples:
            raise ValueError("no training examples")
        self.examples, self.batch_size, self.pad_id, self.device = examples, batch_size, pad_id, device
        self.group_by_length, self.megabatch = group_by_length, megabatch
        self.lengths = [length(e) for e in examples] if group_by_length else None
        self.generator = torch.Generator().manual_seed(seed)
        self.iterators = weakref.WeakSet()  # the live iterators, checked when checkpointing
        self.snapshots = 0  # checkpoints collected over this loader (forgetlab.checkpoint.snapshot)

    def __len__(self) -> int:
        return math.ceil(len(self.examples) / self.batch_size)

    def __iter__(self) -> "Batches":
        return Batches(self)

    def epoch_order(self) -> list[int]:
        """The next epoch's order of example indices; consecutive batch_size chunks are its batches."""
        order = torch.randperm(len(self.examples), generator=self.generator).tolist()
        if not self.group_by_length:
            return order
        run, bs = self.megabatch * self.batch_size, self.batch_size
        ranked = []
        for i in range(0, len(order), run):
            ranked += sorted(order[i : i + run], key=lambda j: -self.lengths[j])  # stable: ties keep the random order
        full = len(ranked) // bs
        batches = [ranked[b * bs : (b + 1) * bs] for b in torch.randperm(full, generator=self.generator).tolist()]
        return [j for batch in batches for j in batch] + ranked[full * bs :]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def _batch(self, indices: list[int]) -> dict:
        rows = [self.examples[j] for j in distributed.shard(indices)]  # this rank's share (all of it in one process)
        if "input_ids" in rows[0]:
            return self._collate(rows)
        return {view: self._collate([r[view] for r in rows]) for view in rows[0]}

    def _collate(self, rows: list[dict]) -> dict:
        return {k: v.to(self.device) for k, v in collate(rows, self.pad_id).items()}


def length(example: dict) -> int:
    """An example's length in tokens: of its encoding, or of its longest view."""
    if "input_ids" in example:
        return len(example["input_ids"])
    return max(len(view["input_ids"]) for view in example.values())


class Batches:
    """An iterator over a Loader whose position (the current permutation and the index in it, and
    the loader's generator) is restorable: a checkpoint resumes the data order exactly."""

    def __init__(self, loader: Loader):
        self.loader, self.order, self.index, self.saved = loader, None, 0, -1
        loader.iterators.add(self)

    def __iter__(self) -> "Batches":
        return self

    def __next__(self) -> dict:
        if self.order is None or self.index >= len(self.order):  # a new epoch, drawn when first needed
            self.order = self.loader.epoch_order()
            self.index = 0
        chunk = self.order[self.index : self.index + self.loader.batch_size]
        self.index += len(chunk)
        return self.loader._batch(chunk)

    def state_dict(self) -> dict:
        self.saved = self.loader.snapshots  # this iterator is in the snapshot being collected
        return {"loader": self.loader.state_dict(), "order": self.order, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state["loader"])
        self.order, self.index = state["order"], state["index"]


class Paired:
    """Batches for unlearning: {"forget": ..., "retain": ...} plus any other views of the forget
    rows (e.g. "idk", "perturbed"); the forget loader sets the epoch. Restorable like Batches."""

    def __init__(self, primary: Loader, secondary: Loader | None):
        self.primary = iter(primary)
        self.secondary = iter(secondary) if secondary is not None else None

    def __iter__(self) -> "Paired":
        return self

    def __next__(self) -> dict:
        batch = next(self.primary)
        views = batch if "input_ids" not in batch else {"forget": batch}
        return {**views, "retain": next(self.secondary) if self.secondary is not None else None}

    def state_dict(self) -> dict:
        return {"primary": self.primary.state_dict(),
                "secondary": self.secondary.state_dict() if self.secondary is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.primary.load_state_dict(state["primary"])
        if self.secondary is not None:
            self.secondary.load_state_dict(state["secondary"])


def paired(primary: Loader, secondary: Loader | None) -> Paired:
    return Paired(primary, secondary)


def sync_every(cfg: TrainConfig, device: torch.device) -> int:
    """Optimizer steps between the loop's host syncs: cfg.sync_every, else every step on the CPU
    (where reading a value costs nothing) and every 16 on an accelerator."""
    if cfg.sync_every is not None:
        return cfg.sync_every
    return 1 if device.type == "cpu" else 16


class Pending:
    """The steps whose loss, loss parts and grad norm are still on the device: `flush` reads them
    all in one sync, stops on the first NaN/inf loss (naming its step and micro-batch), and logs
    each step as the loop always did (the same Python floats, in step order)."""

    def __init__(self, desc: str, grad_accum: int, log, every: int):
        self.desc, self.grad_accum, self.log, self.every, self.steps = desc, grad_accum, log, every, []

    def check(self, loss: torch.Tensor, step: int, micro: int) -> None:
        if not torch.isfinite(loss):
            self.fail(loss.item(), step, micro)

    def fail(self, value: float, step: int, micro: int):
        raise NonFiniteLossError(
            f"{self.desc}: the loss is {value} at step {step} (micro-batch {micro}); stopping. "
            "Lower the learning rate or check the data and the method's hyperparameters."
        )

    def add(self, step: int, losses: list, parts: list[dict], grad_norm: torch.Tensor, lr: float) -> None:
        self.steps.append((step, losses, parts, grad_norm, lr))

    def flush(self) -> None:
        tensors = [t for _, losses, parts, g, _ in self.steps
                   for t in [*losses, g, *(v for p in parts for v in p.values())] if torch.is_tensor(t)]
        values = iter(torch.stack([t.double().reshape(()) for t in tensors]).tolist() if tensors else [])

        def host(v):
            return next(values) if torch.is_tensor(v) else v

        rows = []
        for step, losses, parts, g, lr in self.steps:  # in the order of `tensors`
            losses, grad_norm = [host(v) for v in losses], host(g)
            parts = [{k: host(v) for k, v in p.items()} for p in parts]
            for micro, value in enumerate(losses):
                if not math.isfinite(value):
                    self.steps = []
                    self.fail(value, step, micro)
            total, extras = 0.0, {}
            for value, p in zip(losses, parts):
                total += value / self.grad_accum
                for k, v in p.items():
                    extras[k] = extras.get(k, 0.0) + float(v) / self.grad_accum
            rows.append((step, {"loss": distributed.mean(total), "lr": lr, "grad_norm": float(grad_norm), **extras}))
        self.steps = []
        for step, row in rows:
            if self.log is not None:
                self.log(step, row)


def num_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * batches_per_epoch / cfg.grad_accum))


def train(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]],
    batches: Iterator[dict],
    steps: int,
    cfg: TrainConfig,
    hooks: Sequence[Hooks] = (),
    log: Callable[[int, dict], None] | None = None,
    desc: str = "train",
    context: TrainContext | None = None,
    checkpoint: Checkpointer | None = None,
    precision: str = "auto",
    strategy: str = "ddp",
) -> torch.nn.Module:
    ctx = context or TrainContext(total_steps=steps)
    if checkpoint is not None and checkpoint.every and not hasattr(batches, "state_dict"):
        raise CheckpointError(f"{desc}: checkpoint_every needs a restorable data iterator (forgetlab.train.Loader)")
    resume = checkpoint.load() if checkpoint is not None else None
    # a resumed run sets up exactly as a fresh one (on the initial model), then restores the checkpoint;
    # what setup logs is already in the checkpoint's history
    with log.muted() if resume is not None and isinstance(log, StepLog) else nullcontext():
        for hook in hooks:
            model = hook.setup(model, ctx)
    fsdp = strategy == "fsdp" and distributed.active()
    if fsdp:  # parameters, gradients and AdamW's state sharded over the ranks; a frozen reference too
        dtype = autocast_dtype(precision, distributed.device())
        model = distributed.shard_model(model, dtype)
        for hook in hooks:
            if getattr(hook, "reference", None) is not None:
                hook.reference = distributed.shard_model(hook.reference, dtype)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": params, "weight_decay": cfg.weight_decay}]
    for hook in hooks:
        groups = hook.param_groups(model, groups)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True if cfg.fused_adamw else None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(steps, cfg.warmup_ratio, cfg.min_lr_ratio, cfg.schedule))
    parts = (model, optimizer, scheduler, batches, ctx, hooks, log)
    done = restore(resume, *parts) if resume is not None else 0
    if resume is not None:
        checkpoint.resumed(done, steps, resume.get("run_id"))
    dev = next(model.parameters()).device
    autocast(precision, dev)  # an unknown or unsupported precision fails here, before any step

    saved = done if resume is not None else -1
    pending = Pending(desc, cfg.grad_accum, log, sync_every(cfg, dev))
    with checkpoint.on_sigterm() if checkpoint is not None else nullcontext():
        for step in tqdm(range(done, steps), desc=desc, mininterval=2.0, initial=done, total=steps):
            if checkpoint is not None and distributed.agree(checkpoint.requested):
                checkpoint.requested = True  # every rank stops at this step boundary
                break
            optimizer.zero_grad(set_to_none=True)
            losses, parts_of_step = [], []
            for micro in range(cfg.grad_accum):
                if fsdp:  # reduce-scatter the gradients once, after the step's last micro-batch
                    model.set_requires_gradient_sync(micro == cfg.grad_accum - 1)
                with autocast(precision, dev):
                    loss, loss_parts = loss_fn(model, next(batches))
                if pending.every == 1:  # syncing every step: stop before this loss is backpropagated
                    pending.check(loss, step, micro)
                (loss / cfg.grad_accum).backward()
                losses.append(loss.detach())
                parts_of_step.append({k: v.detach() if torch.is_tensor(v) else v for k, v in loss_parts.items()})
            if not fsdp:
                distributed.average_gradients(params)  # data-parallel workers: the mean over ranks (no-op in one process)
            grad_norm = distributed.full_tensor(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            lr = scheduler.get_last_lr()[0]
            for hook in hooks:
                hook.before_step(model, step, optimizer)
            optimizer.step()
            scheduler.step()
            for hook in hooks:
                hook.after_step(model, step, optimizer)
            pending.add(step, losses, parts_of_step, grad_norm, lr)
            done = step + 1
            due = checkpoint is not None and checkpoint.due(done, steps)
            if due or done % pending.every == 0:
                pending.flush()  # raises on a NaN/inf loss of these steps, before any checkpoint holds it
            if due:
                checkpoint.save(snapshot(done, *parts))
                saved = done
        pending.flush()
        if checkpoint is not None and distributed.agree(checkpoint.requested):
            preempt(checkpoint, done, steps, saved, parts)

    for hook in hooks:
        model = hook.finalize(model)
    model.eval()
    return model
