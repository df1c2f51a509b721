"""The three batched passes behind `forgetlab.eval.scoring`, each over many sequences at once.

* `token_stats`: one teacher-forced forward per padded batch. For every supervised (answer) token
  it returns log p(y_t | <t), whether argmax p(. | <t) == y_t, and the mean and standard deviation
  of log p(z | <t) under z ~ p(. | <t) (Min-K%++'s normalisers). Every likelihood metric (answer
  probability, truth ratio, LOSS/zlib/Min-K%/Min-K%++/reference attacks, exact memorization,
  extraction strength) is a function of these arrays.
* `greedy_continuations`: batched greedy decoding of left-padded prompts (ROUGE, verbmem).
* `grad_norms`: per-sample gradient norms (GradNorm attack), batched with torch.func.vmap, in
  train mode without the eos token, as open-unlearning's GradNormAttack.

Sequences are sorted by length before batching, so batches carry little padding; results are put
back in input order. Padding never changes a result: the attention mask hides pad tokens, position
ids start at 0 for every row, and right padding only follows the real tokens (causal attention).
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from forgetlab.qa import IGNORE, collate


@dataclass
class TokenStats:
    """Per supervised token of one sequence (all float64 / bool numpy arrays of equal length)."""

    logp: np.ndarray    # log p(y_t | <t)
    match: np.ndarray   # argmax_z p(z | <t) == y_t
    mu: np.ndarray      # E_{z~p}[log p(z | <t)]
    sigma: np.ndarray   # sqrt(E_{z~p}[(log p(z | <t) - mu)^2])

    @property
    def nll(self) -> float:
        """Mean per-token negative log-likelihood (NaN for a sequence without supervised tokens)."""
        return float(-self.logp.mean()) if len(self.logp) else float("nan")


def device_of(model) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def timed(timings: dict | None, key: str):
    """Add the block's wall time to timings[key] (no-op when timings is None)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


def _by_length(encoded: list[dict], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]["input_ids"]))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def supervised_stats(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(logp, match, mu, sigma, counts) over the supervised positions of a batch, flattened in row
    order; counts[b] is the number of supervised tokens of row b. logits: (B, T, V), labels (B, T)."""
    shift = labels[:, 1:]
    sel = shift != IGNORE
    logp_all = torch.log_softmax(logits[:, :-1][sel].float(), dim=-1)  # (N, V), supervised rows only
    target = shift[sel]
    logp = logp_all.gather(-1, target[:, None])[:, 0]
    match = logp_all.argmax(-1) == target
    p = logp_all.exp()
    mu = (p * logp_all).sum(-1)
    sigma = (p * (logp_all - mu[:, None]).square()).sum(-1).sqrt()
    return logp, match, mu, sigma, sel.sum(-1)


@torch.no_grad()
def token_stats(model, encoded: list[dict], pad_id: int, batch_size: int = 32) -> list[TokenStats]:
    """TokenStats for every encoded sequence ({"input_ids", "labels"}), one forward per batch."""
    device = device_of(model)
    out: list[TokenStats | None] = [None] * len(encoded)
    for idx in _by_length(encoded, batch_size):
        batch = collate([encoded[i] for i in idx], pad_id)
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits
        logp, match, mu, sigma, counts = supervised_stats(logits, batch["labels"].to(device))
        parts = [t.cpu().numpy() for t in (logp.double(), match, mu.double(), sigma.double())]
        bounds = np.cumsum([0, *counts.tolist()])
        for j, i in enumerate(idx):
            a, b = bounds[j], bounds[j + 1]
            out[i] = TokenStats(*(x[a:b] for x in parts))
    return out  # type: ignore[return-value]


@torch.no_grad()
def greedy_continuations(model, prompts: list[list[int]], pad_id: int, eos_id: int, batch_size: int = 32,
                         max_new_tokens: int = 40) -> list[list[int]]:
    """Greedy new tokens (up to, not including, the first eos) for each prompt; left-padded batches."""
    device = device_of(model)
    results: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, p in enumerate(chunk):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        gen = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
            max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_id,
            temperature=None, top_p=None, top_k=None,
        )
        for row in gen[:, width:].tolist():
            results.append(row[:row.index(eos_id)] if eos_id in row else row)
    return results


GRAD_BUDGET = 2 ** 26  # floats of per-sample gradients held at once (256 MiB in float32)


def without_last_label(example: dict) -> dict:
    """A copy of an encoded sequence whose last supervised token (the eos) is unsupervised, as
    open-unlearning's ``tokenwise_logprobs`` drops the last labelled token."""
    labels = list(example["labels"])
    supervised = [i for i, label in enumerate(labels) if label != IGNORE]
    if supervised:
        labels[supervised[-1]] = IGNORE
    return {**example, "labels": labels}


def grad_norms(model, encoded: list[dict], pad_id: int, batch_size: int = 32, p: float = 2.0, seed: int = 0,
               train: bool = True, eos: bool = False) -> list[float]:
    """GradNorm statistic per sequence: mean over the model's parameter tensors W_j of
    ||d L(x) / d W_j||_p, L(x) the mean NLL of x's supervised tokens but the last (the eos).

    As open-unlearning's GradNormAttack (``compute_batch_values``): the model is in train mode, so
    any dropout is active, and the eos is dropped. Dropout masks come from a torch generator state
    seeded with ``seed`` for this call (the global RNG is restored afterwards) and differ per sample
    (vmap randomness="different"), so the same inputs, batch_size and seed give the same norms.
    ``train=False`` (eval mode) and ``eos=True`` give forgetlab's former statistic.

    Per-sample gradients come from torch.func (vmap of grad over a functional call), in chunks of
    at most `batch_size` rows and GRAD_BUDGET gradient floats; a model too large for two samples
    at once therefore runs one sample per call. Rows are right-padded and run without an attention
    mask: with causal attention a real token never sees the pads after it, and pads are unsupervised.
    """
    from torch.func import functional_call, grad, vmap

    device = device_of(model)
    if not eos:
        encoded = [without_last_label(e) for e in encoded]
    params = {k: v.detach() for k, v in model.named_parameters()}
    n_params = sum(v.numel() for v in params.values())
    chunk = max(1, min(batch_size, GRAD_BUDGET // max(1, n_params)))

    def loss(ps, ids, labels):
        logits = functional_call(model, ps, (), {"input_ids": ids[None]}).logits[0, :-1]
        target = labels[1:]
        sel = target != IGNORE
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, target.clamp(min=0)[:, None])[:, 0]
        return -(logp * sel).sum() / sel.sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0), randomness="different")
    out = [float("nan")] * len(encoded)
    was_training = model.training
    model.train(train)
    try:
        with (warnings.catch_warnings(),
              torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])):
            warnings.filterwarnings("ignore", message=".*batching rule.*")  # CPU sdpa backward falls back to a loop
            torch.manual_seed(seed)
            for idx in _by_length(encoded, chunk):
                batch = collate([encoded[i] for i in idx], pad_id)
                grads = per_sample(params, batch["input_ids"].to(device), batch["labels"].to(device))
                norms = torch.stack([g.flatten(1).norm(p=p, dim=1) for g in grads.values()], dim=1).mean(1)
                for i, n in zip(idx, norms.tolist()):
                    out[i] = n
    finally:
        model.train(was_training)
    return out
