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


def supervised_stats(logits: torch.Tensor, labels: torch.Tensor, full: bool = True) -> tuple[torch.Tensor, ...]:
    """(logp, match, mu, sigma, counts) over the supervised positions of a batch, flattened in row
    order; counts[b] is the number of supervised tokens of row b. logits: (B, T, V), labels (B, T).
    `full`: stats_of's."""
    shift = labels[:, 1:]
    sel = shift != IGNORE
    return (*stats_of(logits[:, :-1][sel], shift[sel], full), sel.sum(-1))


def stats_of(logits: torch.Tensor, target: torch.Tensor, full: bool = True) -> tuple[torch.Tensor, ...]:
    """(logp, match, mu, sigma) of next-token logits (N, V) and the tokens they predict (N,);
    logp, mu and sigma in float64. Without `full`, match, mu and sigma are NaN (logp alone: the
    likelihood values, a third of the work)."""
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    logp = logp_all.gather(-1, target[:, None])[:, 0]
    if not full:
        nan = torch.full_like(logp, float("nan"), dtype=torch.float64)
        return logp.double(), nan, nan, nan
    match = logp_all.argmax(-1) == target
    p = logp_all.exp()
    mu = (p * logp_all).sum(-1)
    sigma = (p * (logp_all - mu[:, None]).square()).sum(-1).sqrt()
    return logp.double(), match, mu.double(), sigma.double()


@torch.no_grad()
def token_stats(model, encoded: list[dict], pad_id: int, batch_size: int = 32, full: bool = True) -> list[TokenStats]:
    """TokenStats for every encoded sequence ({"input_ids", "labels"}), one forward per batch.
    Without `full`, logp only (match, mu and sigma NaN; `stats_of`)."""
    device = device_of(model)
    out: list[TokenStats | None] = [None] * len(encoded)
    for idx in _by_length(encoded, batch_size):
        batch = collate([encoded[i] for i in idx], pad_id)
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits
        logp, match, mu, sigma, counts = supervised_stats(logits, batch["labels"].to(device), full)
        parts = [t.cpu().numpy() for t in (logp, match, mu, sigma)]
        bounds = np.cumsum([0, *counts.tolist()])
        for j, i in enumerate(idx):
            a, b = bounds[j], bounds[j + 1]
            out[i] = TokenStats(*(x[a:b] for x in parts))
    return out  # type: ignore[return-value]


PACKED_ATTENTION = ("eager", "sdpa")  # attention implementations that take a 4D (per-query) attention mask


def shared_prefix(group: list[dict]) -> int:
    """The length of the unsupervised prefix (the prompt) that every encoding of a group shares:
    the longest common prefix of their input_ids over positions no encoding supervises."""
    first = group[0]["input_ids"]
    n = min(len(e["input_ids"]) for e in group)
    for t in range(n):
        if any(e["input_ids"][t] != first[t] or e["labels"][t] != IGNORE for e in group):
            return t
    return n


def pack(group: list[dict]) -> tuple[list[int], list[int], list[int], list[tuple[int, int]]]:
    """One group as one sequence: the shared prompt once, then every encoding's continuation.
    Returns (ids, position ids, segment of each token: -1 for the prompt, k for encoding k's
    continuation, and for each supervised token of each encoding in order, (position whose logits
    predict it, its token id)). A continuation's positions start where the prompt ends, as they do
    in its own sequence, and it attends to the prompt and to itself only (`packed_mask`)."""
    p = shared_prefix(group)
    ids, pos, seg, targets = list(group[0]["input_ids"][:p]), list(range(p)), [-1] * p, []
    for k, e in enumerate(group):
        start = len(ids)
        n = len(e["input_ids"])
        ids += e["input_ids"][p:]
        pos += range(p, n)
        seg += [k] * (n - p)
        for t in range(1, len(e["input_ids"])):  # the token at t is predicted at t - 1, as in token_stats
            if e["labels"][t] != IGNORE:
                targets.append((t - 1 if t - 1 < p else start + t - 1 - p, e["labels"][t]))
    return ids, pos, seg, targets


def packed_mask(segments: list[list[int]], width: int, dtype, device) -> torch.Tensor:
    """(B, 1, T, T) additive mask of packed sequences: a prompt token sees the prompt tokens up to
    itself; a continuation token sees the whole prompt and its own continuation up to itself;
    padding sees only itself (so that no row is all masked)."""
    seg = torch.full((len(segments), width), -2, dtype=torch.long)
    for b, s in enumerate(segments):
        seg[b, :len(s)] = torch.tensor(s)
    q, k = seg[:, :, None], seg[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allow = causal & ((k == -1) & (q != -2) | (q == k) & (q >= 0)) | torch.eye(width, dtype=torch.bool)
    mask = torch.zeros(allow.shape, dtype=dtype).masked_fill(~allow, torch.finfo(dtype).min)
    return mask[:, None].to(device)


def is_sharded(model) -> bool:
    """Whether `model` is sharded with FSDP2 (forgetlab.distributed.shard_model)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@torch.no_grad()
def grouped_token_stats(model, groups: list[list[dict]], pad_id: int, batch_size: int = 32,
                        full: bool = True) -> list[list[TokenStats]]:
    """token_stats of every encoding of every group, where a group's encodings share their prompt
    (a QA row's answer, paraphrase and perturbed answers): each group is one packed sequence
    (`pack`), so the prompt runs once per group, and the LM head runs only where a supervised token
    is predicted (everywhere in an FSDP-sharded model, whose root forward gathers the head). The
    values are token_stats' up to float rounding. A model whose attention takes no 4D mask (e.g.
    flash attention) runs token_stats on the encodings one by one instead. Without `full`, each
    TokenStats has logp only (match, mu and sigma NaN; `stats_of`)."""
    if getattr(model.config, "_attn_implementation", "eager") not in PACKED_ATTENTION:
        flat = token_stats(model, [e for g in groups for e in g], pad_id, batch_size, full)
        bounds = np.cumsum([0, *map(len, groups)])
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    device, packed, sharded = device_of(model), [pack(g) for g in groups], is_sharded(model)
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    dtype = next(model.parameters()).dtype
    order = sorted(range(len(groups)), key=lambda i: -len(packed[i][0]))
    out: list[list[TokenStats] | None] = [None] * len(groups)
    start = 0
    while start < len(order):  # batches of about batch_size encodings
        idx, n = [], 0
        while start < len(order) and (not idx or n + len(groups[order[start]]) <= batch_size):
            idx.append(order[start])
            n += len(groups[order[start]])
            start += 1
        width = max(len(packed[i][0]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        pos = torch.zeros((len(idx), width), dtype=torch.long)
        for b, i in enumerate(idx):
            ids[b, :len(packed[i][0])] = torch.tensor(packed[i][0])
            pos[b, :len(packed[i][1])] = torch.tensor(packed[i][1])
        inputs = dict(input_ids=ids.to(device), position_ids=pos.to(device),
                      attention_mask=packed_mask([packed[i][2] for i in idx], width, dtype, device))
        rows = torch.tensor([b * width + t for b, i in enumerate(idx) for t, _ in packed[i][3]], dtype=torch.long,
                            device=device)
        target = torch.tensor([y for i in idx for _, y in packed[i][3]], dtype=torch.long, device=device)
        if sharded:  # FSDP gathers the embeddings and the head in the root module's forward only
            logits = model(**inputs).logits
            logits = logits.reshape(-1, logits.shape[-1])[rows]
        else:
            hidden = lm.get_decoder()(**inputs).last_hidden_state
            logits = lm.get_output_embeddings()(hidden.reshape(-1, hidden.shape[-1])[rows])
        logp, match, mu, sigma = (t.cpu().numpy() for t in stats_of(logits, target, full))
        offset = 0
        for i in idx:
            stats = []
            for e in groups[i]:
                n_sup = sum(1 for label in e["labels"][1:] if label != IGNORE)
                a, offset = offset, offset + n_sup
                stats.append(TokenStats(logp[a:offset], match[a:offset], mu[a:offset], sigma[a:offset]))
            out[i] = stats
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
