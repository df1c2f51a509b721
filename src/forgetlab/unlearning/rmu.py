"""`rmu`: Representation Misdirection for Unlearning (Li et al., "The WMDP Benchmark: Measuring and
Reducing Malicious Use With Unlearning", ICML 2024). Reference implementation: open-unlearning's RMU
trainer (src/trainer/unlearn/rmu.py, borrowed from the WMDP repository's rmu/unlearn.py).

With h_l(x) in R^{T x d} the residual stream after decoder layer l = `layer` (the output of
model.layers[l], i.e. hidden_states[l + 1] for any l but the last, where transformers applies the
final norm to hidden_states[-1]; we always take the block's own output, as the reference's forward
hook does), S(x) the scored positions of x (`tokens`) and mse_t = (1/d) ||h_t - target_t||^2:

    u      = r / ||r||,   r ~ U[0, 1)^d drawn once from torch.Generator().manual_seed(seed)
    L_fgt  = mean_{x in forget} mean_{t in S(x)} mse_t(h_l(x), c * u)            (c = `steering_coef`)
    L_rtn  = mean_{x in retain} mean_{t in S(x)} mse_t(h_l(x), h_l^frozen(x))
    L      = gamma * L_fgt + alpha * L_rtn

as in the reference: positions are averaged per sequence, then over the batch (`reduction:
sequence`; the paper's (1/L) sum over the tokens of each x), and the scored positions are the
answer tokens, those with a label (`tokens: answer`; the reference's mask labels != -100, the
positions holding answer tokens). The squared norm is divided by d (the reference's per-element
torch mse_loss; the paper's formula has no 1/d, which only rescales c^2 and the lr). h^frozen is the
frozen pre-unlearning model (`self.reference`, loaded once by the recipe; only needed when alpha > 0).

Trained weights, as the paper and the reference's WMDP setting (the WMDP code's layer_ids 5,6,7 and
param_ids [6], open-unlearning's experiment/unlearn/wmdp and its RMU class default
model.layers.(5|6|7).mlp.down_proj.weight): only `trainable_params` (default mlp.down_proj.weight)
of `update_layers` (default l-2, l-1, l, clipped at 0). `setup` freezes everything else with
requires_grad_(False), so the optimizer (built after setup) never sees it. trainable_params: [all]
trains every weight instead, as open-unlearning's generic configs/trainer/RMU.yaml (`.*`).
Forward passes stop at layer l: the layers above it and the LM head are never run (nor trained).

Defaults are the reference's configs/trainer/RMU.yaml: steering_coef 2, alpha 1, gamma 1. c and
alpha depend on the model's activation scale (the paper: c should be several times the token norm
||h_l||; its Zephyr-7B run used c = 6.5, alpha = 1200; the WMDP code's defaults are 20 and 100);
the study configs set values for the tiny models. `layer` defaults to 1 (the reference's layer 7
of 32, about a quarter of the depth, on a 4-layer model).

Deliberate differences, each with the setting that restores the reference:
- a row with no scored position (an answer truncated away) counts as 0 in the batch mean; the
  reference divides 0 by 0 (NaN). No switch.
- forgetlab before issue 11 pooled every non-pad token of the batch (prompt included) and trained
  all three MLP matrices: `tokens: all`, `reduction: pooled` (the WMDP code's mse_loss over the whole
  batch, which unlearns on raw text), `trainable_params: [mlp.gate_proj.weight, mlp.up_proj.weight,
  mlp.down_proj.weight]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from forgetlab.params import require_int
from forgetlab.qa import IGNORE
from forgetlab.regularizers import base_model
from forgetlab.unlearning import METHODS, Method


class _ReachedLayer(Exception):
    """Raised by the capture hook to stop a forward pass once the chosen layer has run."""


def decoder_layers(model):
    return base_model(model).model.layers


def layer_output(model, layer: int, batch: dict) -> torch.Tensor:
    """The residual stream after decoder layer `layer`, shape (batch, seq, d); the forward stops there."""
    captured = {}

    def hook(module, args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output
        raise _ReachedLayer

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        base_model(model).model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    except _ReachedLayer:
        pass
    finally:
        handle.remove()
    return captured["h"]


TOKENS = ("answer", "all")
REDUCTIONS = ("sequence", "pooled")


def token_mse(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, reduction: str = "pooled") -> torch.Tensor:
    """(1/d) * ||h_t - target_t||^2 averaged over the positions where mask is set: over all of them
    in the batch (`pooled`), or per row and then over rows (`sequence`)."""
    per_token = (h.float() - target.float()).pow(2).mean(-1)
    mask = mask.to(per_token.dtype)
    if reduction == "pooled":
        return (per_token * mask).sum() / mask.sum().clamp(min=1)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def scored_positions(batch: dict, tokens: str) -> torch.Tensor:
    """The positions RMU scores: the answer tokens (label set) or every non-pad token."""
    return batch["labels"] != IGNORE if tokens == "answer" else batch["attention_mask"].bool()


def steering_direction(dim: int, seed: int) -> torch.Tensor:
    """The fixed random unit vector u: uniform [0, 1) entries from a seeded generator, normalised."""
    r = torch.rand(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return r / r.norm()


@METHODS.register("rmu")
@dataclass
class RMU(Method):
    layer: int = 1
    update_layers: list | None = None
    trainable_params: list = field(default_factory=lambda: ["mlp.down_proj.weight"])
    steering_coef: float = 2.0
    alpha: float = 1.0
    gamma: float = 1.0
    tokens: str = "answer"
    reduction: str = "sequence"
    seed: int = 0
    uses_retain = True
    u: torch.Tensor | None = field(default=None, init=False, repr=False)  # set in setup (or first loss)

    def __post_init__(self):
        require_int("rmu", "layer", self.layer, hint="a decoder layer index")
        if self.update_layers is None:
            self.update_layers = list(range(max(0, self.layer - 2), self.layer + 1))
        layers = self.update_layers
        if (not isinstance(layers, (list, tuple)) or not layers
                or any(isinstance(i, bool) or not isinstance(i, int) for i in layers)):
            raise ValueError(f"rmu.update_layers must be a non-empty list of layer indices, got {layers!r}")
        if len(set(layers)) != len(layers) or not all(0 <= i <= self.layer for i in layers):
            raise ValueError(f"rmu.update_layers must be distinct indices in [0, layer={self.layer}] "
                             f"(layers above it cannot change h_layer), got {layers!r}")
        self.update_layers = sorted(layers)
        names = self.trainable_params
        if (not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n for n in names)
                or len(set(names)) != len(names) or ("all" in names and len(names) > 1)):
            raise ValueError("rmu.trainable_params must be a non-empty list of distinct parameter names within a "
                             f"decoder layer (e.g. mlp.down_proj.weight), or [all], got {names!r}")
        self.trainable_params = list(names)
        if not self.steering_coef > 0:
            raise ValueError(f"rmu.steering_coef must be > 0, got {self.steering_coef}")
        if not self.alpha >= 0:
            raise ValueError(f"rmu.alpha must be >= 0, got {self.alpha}")
        if not self.gamma >= 0:
            raise ValueError(f"rmu.gamma must be >= 0, got {self.gamma}")
        if self.tokens not in TOKENS:
            raise ValueError(f"rmu.tokens must be one of {list(TOKENS)}, got {self.tokens!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"rmu.reduction must be one of {list(REDUCTIONS)}, got {self.reduction!r}")
        require_int("rmu", "seed", self.seed)

    @property
    def needs_reference(self) -> bool:
        return self.alpha > 0

    def setup(self, model, ctx):
        layers = decoder_layers(model)
        if self.layer >= len(layers):
            raise ValueError(f"rmu.layer = {self.layer}, but the model has {len(layers)} decoder layers "
                             f"(valid: 0..{len(layers) - 1})")
        if self.trainable_params == ["all"]:
            model.requires_grad_(True)
        else:
            model.requires_grad_(False)
            for i in self.update_layers:
                named = dict(layers[i].named_parameters())
                for name in self.trainable_params:
                    if name not in named:
                        raise ValueError(f"rmu.trainable_params: decoder layer {i} has no parameter {name!r} "
                                         f"(it has: {', '.join(named)})")
                    named[name].requires_grad_(True)
        self.u = steering_direction(base_model(model).config.hidden_size, self.seed)
        return model

    def loss(self, model, batch):
        forget = batch["forget"]
        h = layer_output(model, self.layer, forget)
        if self.u is None:
            self.u = steering_direction(h.size(-1), self.seed)
        control = (self.steering_coef * self.u).to(h.device)
        forget_mse = token_mse(h, control.expand_as(h), scored_positions(forget, self.tokens), self.reduction)
        if self.alpha:
            retain = batch["retain"]
            h_retain = layer_output(model, self.layer, retain)
            with torch.no_grad():
                h_frozen = layer_output(self.reference, self.layer, retain)
            retain_mse = token_mse(h_retain, h_frozen, scored_positions(retain, self.tokens), self.reduction)
        else:
            retain_mse = torch.zeros((), device=forget_mse.device)
        loss = self.gamma * forget_mse + self.alpha * retain_mse
        return loss, {"rmu_forget": forget_mse.item(), "rmu_retain": retain_mse.item()}
