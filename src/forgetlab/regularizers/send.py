"""`send`: Sensitivity Dropout (SenD) on the penultimate layer's embedding indices.

Reference: Mohammadzadeh, Guerra, Bonizzato, Rabbany & Farnadi, "Hallucination Detox: Sensitivity
Dropout (SenD) for Large Language Model Training", arXiv:2410.15460 (ACL 2025); the authors' code
is github.com/notarobot-hub/SEND (send/train_no_meta.py, send/send_pythia.py,
send/extended_send_multi_dataset.py). SenD tracks, over training checkpoints, the embedding of a
fixed tracking set at the output of the penultimate layer, and deterministically drops the
Sensitive Embedding Indices (SEIs): the hidden dimensions that vary most across checkpoints.

Mechanism implemented. A checkpoint is taken after every K = `every` optimizer steps (after steps
t with (t+1) % K == 0): the model is run without gradients, in eval mode and without the mask, on
the fixed probe batch, and for each probe input n the output of decoder layer L-2 (the penultimate
layer; transformers' hidden_states[-2]) is read at its second-to-last real token (the paper's
"SLT" embedding; `token: mean` averages over the input's real tokens instead), giving
E_c in R^{N x d} for checkpoint c. Every W = `window` checkpoints (non-overlapping windows, as
the authors' loop recomputes every 3 epochs from the last 3) the sensitivity of index i is

    s_i = (1/N) * sum_n Var_{c in window}( E_c[n, i] )                       (score: variance)
    s_i = (1/N) * sum_n Var_c(E_c[n, i]) * sum_c |E_{c+1}[n, i] - E_c[n, i]|  (score: change_x_variance)

(population variance), and the k = floor(q * d) indices of largest s are the SEIs. Until the next
window closes, training-mode forwards multiply the penultimate layer's output by a 0/1 mask that
zeroes exactly those k dimensions (deterministic, no rescaling); nothing is dropped before the first
window closes. `finalize` removes the hook: the saved model carries no mask.

What follows the paper: the site (penultimate-layer embedding dimensions), the SLT token, the
variability across checkpoints as sensitivity, a window of 3 checkpoints, a top-K% selection
(the authors' scripts use K = 20% or 30%; the default here is 20%), deterministic dropping
held until the next window.

Deliberate differences:
  - Checkpoint interval: `every` optimizer steps instead of one epoch (the study's fine-tunes are
    short; `every` = steps per epoch restores the paper's interval).
  - Tracking set: the loop's fixed probe batch (TrainContext.probe, training examples) instead of a
    held-out 10% tracking split.
  - How indices are dropped: the mask acts on the activations. The authors' released code instead
    zeroes, once per epoch, the penultimate block's MLP weights at those indices (which the
    optimizer then lets regrow) and indexes MLP neurons with hidden-dimension indices; we drop the
    embedding indices themselves, as the paper describes.
  - The released code's `combined_sensitivity` multiplies net change by variance, and averages
    over checkpoints before measuring variability across tracking inputs; `score:
    change_x_variance` gives the product, per input, across checkpoints (the paper's axis).
  - Efficient EigenScore (EES), the paper's fast hallucination metric, is not computed: it tracks
    hallucination during training (the authors' loops only log it after each epoch) and plays no
    part in choosing the SEIs. The loop here runs a fixed number of steps. The authors' freezing of the first layers is not part of SenD
    and is not done.
  - The probe runs with the mask off (eval mode), so an index dropped in one window can be
    selected again; in the released code the tracking pass sees the zeroed weights.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from forgetlab.params import require_int
from forgetlab.regularizers import REGULARIZERS, Regularizer, base_model

TOKENS = ("second_last", "mean")
SCORES = ("variance", "change_x_variance")


def slt_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's second-to-last real token (its only token if it has one)."""
    mask = attention_mask.long()
    target = (mask.sum(1) - 1).clamp(min=1)
    hit = (mask.cumsum(1) == target.unsqueeze(1)) & (mask == 1)
    return hit.float().argmax(1)


def sensitivity(embeddings: torch.Tensor, score: str = "variance") -> torch.Tensor:
    """embeddings (checkpoints C, inputs N, dims d) -> s (d,), mean over inputs of the per-input score."""
    e = embeddings.double()
    s = e.var(0, unbiased=False)
    if score == "change_x_variance":
        s = s * (e[1:] - e[:-1]).abs().sum(0)
    return s.mean(0)


@REGULARIZERS.register("send")
@dataclass
class SenD(Regularizer):
    every: int = 20
    window: int = 3
    q: float = 0.2
    token: str = "second_last"
    score: str = "variance"
    _probe: dict | None = field(default=None, init=False, repr=False)
    _history: deque = field(default_factory=deque, init=False, repr=False)  # (N, d) per checkpoint
    _keep: torch.Tensor | None = field(default=None, init=False, repr=False)  # (d,) 0/1 mask or None
    _handle: object = field(default=None, init=False, repr=False)
    _recording: list | None = field(default=None, init=False, repr=False)  # set while probing
    _checkpoints: int = field(default=0, init=False, repr=False)
    _refreshes: int = field(default=0, init=False, repr=False)
    _dropped: float = field(default=0.0, init=False, repr=False)  # fraction of indices dropped by the last mask

    def __post_init__(self):
        require_int("send", "every", self.every, low=1)
        require_int("send", "window", self.window, low=2)
        if isinstance(self.q, bool) or not isinstance(self.q, (int, float)) or not 0.0 <= self.q < 1.0:
            raise ValueError(f"send.q must be in [0, 1), got {self.q!r}")
        if self.token not in TOKENS:
            raise ValueError(f"send.token must be one of {', '.join(TOKENS)}, got {self.token!r}")
        if self.score not in SCORES:
            raise ValueError(f"send.score must be one of {', '.join(SCORES)}, got {self.score!r}")

    def _hook(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if self._recording is not None:
            self._recording.append(hidden.detach())
        if module.training and self._keep is not None:
            masked = hidden * self._keep.to(hidden.dtype)
            return (masked,) + tuple(output[1:]) if isinstance(output, tuple) else masked
        return None

    def setup(self, model, ctx):
        if ctx is None or ctx.probe is None:
            raise ValueError("send needs a probe batch (TrainContext.probe) to track the embedding indices")
        layers = base_model(model).model.layers
        if len(layers) < 2:
            raise ValueError(f"send needs a model with at least 2 decoder layers (a penultimate one), got {len(layers)}")
        self._probe = ctx.probe
        self._history = deque(maxlen=self.window)
        self._keep, self._checkpoints, self._refreshes, self._dropped = None, 0, 0, 0.0
        self._handle = layers[-2].register_forward_hook(self._hook)
        return model

    @torch.no_grad()
    def embed(self, model) -> torch.Tensor:
        """(N, d): the penultimate layer's output for each probe input, at its SLT token (or mean)."""
        was_training = model.training
        model.eval()
        self._recording = []
        mask = self._probe["attention_mask"]
        try:
            model(input_ids=self._probe["input_ids"], attention_mask=mask)
            hidden = self._recording[-1].float()
        finally:
            self._recording = None
            model.train(was_training)
        if self.token == "mean":
            m = mask.to(hidden.dtype).unsqueeze(-1)
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), slt_positions(mask).to(hidden.device)]

    def update_mask(self) -> None:
        """The top floor(q * d) indices by sensitivity over the window's checkpoints get dropped."""
        s = sensitivity(torch.stack(list(self._history)), self.score)
        keep = torch.ones(s.numel(), device=self._history[-1].device)
        k = int(self.q * s.numel())
        if k > 0:
            keep[torch.topk(s, k).indices.to(keep.device)] = 0.0
        self._keep = keep
        self._dropped = k / s.numel()

    def after_step(self, model, step: int, optimizer) -> None:
        if (step + 1) % self.every:
            return
        self._history.append(self.embed(model))
        self._checkpoints += 1
        if self._checkpoints % self.window == 0:
            self.update_mask()
            self._refreshes += 1

    def finalize(self, model):
        if self._handle is not None:
            self._handle.remove()
        self._handle, self._keep = None, None
        return model

    def dropped(self) -> list[int]:
        return [] if self._keep is None else (self._keep == 0).nonzero().flatten().tolist()

    def summary(self) -> dict[str, float]:
        return {"checkpoints": float(self._checkpoints), "refreshes": float(self._refreshes),
                "dropped_fraction": self._dropped}

    def state_dict(self) -> dict:
        return {"history": list(self._history), "keep": self._keep,
                "checkpoints": self._checkpoints, "refreshes": self._refreshes, "dropped": self._dropped}

    def load_state_dict(self, state: dict) -> None:
        dev = self._probe["input_ids"].device
        self._history = deque([e.to(dev) for e in state["history"]], maxlen=self.window)
        self._keep = state["keep"].to(dev) if state["keep"] is not None else None
        self._checkpoints, self._refreshes = state["checkpoints"], state["refreshes"]
        self._dropped = state.get("dropped", 0.0)
