"""Loss building blocks shared by fine-tuning and the unlearning methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from forgetlab.qa import IGNORE, token_logprobs


def forward(model, batch: dict):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def token_nll(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean next-token cross-entropy over supervised (label != -100) positions.

    Only the supervised positions go through the softmax (the prompt and padding never do)."""
    targets = labels[:, 1:]
    mask = targets != IGNORE
    return F.cross_entropy(logits[:, :-1][mask].float(), targets[mask], label_smoothing=label_smoothing)


class SupervisedOutputs:
    """A forward pass whose LM head ran only at the supervised positions (`lm_loss(...,
    supervised_logits=True)`): `supervised` is logits[:, :-1][labels[:, 1:] != -100], (N, V), and
    `hidden_states` is the decoder's (when asked for). There are no full `logits`: reading them is
    an error, so a loss term that needs other positions cannot silently see the wrong ones."""

    def __init__(self, supervised: torch.Tensor, hidden_states=None):
        self.supervised, self.hidden_states = supervised, hidden_states

    @property
    def logits(self):
        raise AttributeError("train.supervised_logits: the LM head ran only at the supervised positions; "
                             "read them with forgetlab.losses.logits_at_supervised(outputs, labels)")


def forward_supervised(model, batch: dict, hidden_states: bool = False) -> SupervisedOutputs:
    """The decoder on the whole batch, then the LM head only where the next token is supervised: the
    same logits there as the full forward's (up to the matmul's rounding), without computing the head
    on the prompt and padding positions."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft-wrapped or not
    out = lm.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           output_hidden_states=hidden_states)
    mask = batch["labels"][:, 1:] != IGNORE
    head = lm.get_output_embeddings()
    return SupervisedOutputs(head(out.last_hidden_state[:, :-1][mask]), out.hidden_states if hidden_states else None)


def logits_at_supervised(outputs, labels: torch.Tensor) -> torch.Tensor:
    """The next-token logits at the supervised positions t (those whose label at t+1 is not -100),
    (N, V) in row-major order: what every supervised-position loss term is defined on."""
    if isinstance(outputs, SupervisedOutputs):
        return outputs.supervised
    return outputs.logits[:, :-1][labels[:, 1:] != IGNORE]


def supervised_nll(outputs, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """token_nll of a forward's outputs, full or SupervisedOutputs (the same operations on the same rows)."""
    targets = labels[:, 1:]
    return F.cross_entropy(logits_at_supervised(outputs, labels).float(), targets[targets != IGNORE],
                           label_smoothing=label_smoothing)


def nll(model, batch: dict) -> torch.Tensor:
    """Mean per-token negative log-likelihood of the supervised tokens of a batch."""
    return token_nll(forward(model, batch).logits, batch["labels"])


def sequence_logprob(model, batch: dict) -> torch.Tensor:
    """log pi(y|x) per sample: the sum of the answer tokens' log-probabilities, shape (batch,)."""
    logp, _ = token_logprobs(forward(model, batch).logits, batch["labels"])
    return logp.sum(-1)


def weighted_answer_logprob(model, batch: dict, weight_fn) -> torch.Tensor:
    """Token-weighted ascent objective: E_batch[(1/|y|) sum_t w_t log p(y_t)], w = weight_fn(p) detached."""
    logp, mask = token_logprobs(forward(model, batch).logits, batch["labels"])
    weight = weight_fn(logp.detach().exp()) * mask
    return ((weight * logp).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def weighted_token_logprob(model, batch: dict, weight_fn, reduction: str = "pooled") -> torch.Tensor:
    """Token-weighted ascent objective sum w_t log p(y_t), w = weight_fn(p) detached, averaged either
    "pooled": over all supervised tokens of the batch at once (open-unlearning's WGA and SatImp), or
    "sequence": per sample over its own tokens, then over the batch (= weighted_answer_logprob)."""
    if reduction == "sequence":
        return weighted_answer_logprob(model, batch, weight_fn)
    if reduction != "pooled":
        raise ValueError(f"reduction must be 'pooled' or 'sequence', got {reduction!r}")
    logp, mask = token_logprobs(forward(model, batch).logits, batch["labels"])
    weight = weight_fn(logp.detach().exp()) * mask
    return (weight * logp).sum() / mask.sum().clamp(min=1)


def kl_to_reference_all_positions(model, reference, batch: dict) -> torch.Tensor:
    """KL(p_reference || p_model) of the output distributions averaged over every position of the
    padded batch (prompt, answer, padding and the last position alike), i.e. summed and divided by
    batch * length: open-unlearning's KL retain loss (kl_div with batchmean over flattened positions)."""
    logits = forward(model, batch).logits.float()
    with torch.no_grad():
        ref_logits = forward(reference, batch).logits.float()
    kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(ref_logits, -1), log_target=True, reduction="none")
    return kl.sum(-1).mean()


def kl_to_reference(model, reference, batch: dict) -> torch.Tensor:
    """Mean over supervised positions of KL(p_reference || p_model) of the next-token distributions."""
    logits = forward(model, batch).logits[:, :-1].float()
    with torch.no_grad():
        ref_logits = forward(reference, batch).logits[:, :-1].float()
    mask = batch["labels"][:, 1:] != IGNORE
    kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(ref_logits, -1), log_target=True, reduction="none").sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def supervised_tokens(labels: torch.Tensor) -> torch.Tensor:
    """How many tokens of a batch (or one example's labels) have a label: the count a per-token mean divides by."""
    return (labels[..., 1:] != IGNORE).sum()


def lm_loss(model, batch: dict, regularizers=(), supervised_logits: bool = False,
            tokens_per_batch: float | None = None) -> tuple[torch.Tensor, dict]:
    """The fine-tuning (and pretraining) loss: next-token cross-entropy on the supervised tokens,
    replaced by at most one regularizer's `compute_loss`, plus every regularizer's `extra_loss`.
    With `supervised_logits` (train setting) the LM head runs only at the supervised positions
    (forward_supervised); the loss terms read their logits with logits_at_supervised either way.
    With `tokens_per_batch` (the token_weighted train setting: the run's mean supervised tokens per
    batch) the loss is scaled by this batch's supervised tokens over it, so that over an epoch every
    supervised token weighs the same (the scale is logged as `token_weight`)."""
    hidden = any(r.needs_hidden_states for r in regularizers)
    if supervised_logits:
        outputs = forward_supervised(model, batch, hidden)
    else:
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        output_hidden_states=hidden)
    loss = None
    for reg in regularizers:
        replaced = reg.compute_loss(batch, outputs, model)
        loss = replaced if replaced is not None else loss
    parts = {}
    if loss is None:
        loss = supervised_nll(outputs, batch["labels"])
    else:
        with torch.no_grad():
            parts["ce"] = supervised_nll(outputs, batch["labels"]).item()
    for reg in regularizers:
        extra = reg.extra_loss(batch, outputs, model)
        if extra is not None:
            parts[reg.name] = extra.item()
            loss = loss + extra
    if tokens_per_batch:
        parts["token_weight"] = supervised_tokens(batch["labels"]) / tokens_per_batch
        loss = loss * parts["token_weight"]
    return loss, parts
