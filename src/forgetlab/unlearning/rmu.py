"""`rmu`: Representation Misdirection for Unlearning (Li et al., "The WMDP Benchmark: Measuring and
Reducing Malicious Use With Unlearning", ICML 2024).

With h_l(x) in R^{T x d} the residual stream after decoder layer l = `layer` (the output of
model.layers[l], i.e. hidden_states[l + 1] for any l but the last, where transformers applies the
final norm to hidden_states[-1]; we always take the block's own output), and N(x) the non-pad
(attention-mask) tokens of x:

    u      = r / ||r||,   r ~ U[0, 1)^d drawn once from torch.Generator().manual_seed(seed)
    L_fgt  = mean_{x in forget} mean_{t in N(x)} (1/d) * || h_l(x)_t - c * u ||^2
    L_rtn  = mean_{x in retain} mean_{t in N(x)} (1/d) * || h_l(x)_t - h_l^frozen(x)_t ||^2
    L      = L_fgt + alpha * L_rtn                           (c = `steering_coef`)

The means run over all non-pad tokens of the batch (prompt and answer alike, as in the paper, which
unlearns on raw text). The squared norm is divided by d, i.e. this is the per-element mean squared
error that the reference implementation minimises (torch mse_loss); the paper's c and alpha are
tuned on that scale. h^frozen is the frozen pre-unlearning model (`self.reference`, loaded once by
the recipe; only needed when alpha > 0). Only the MLP weights (gate, up and down projections) of
`update_layers` (default l-2, l-1, l, clipped at 0) are trained: `setup` freezes everything else
with requires_grad_(False), so the optimizer (built after setup) never sees them. Forward passes
stop at layer l: the layers above it and the LM head are never run.

Scale: c should exceed the typical token norm ||h_l|| of the target several times (the paper's
heuristic; its Zephyr-7B values were c = 6.5, alpha = 1200). The defaults (c = 5, alpha = 10) suit
the study's tiny models, whose layer-1 token norms are about 1-1.5 after fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

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


def token_mse(h: torch.Tensor, target: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over non-pad tokens of (1/d) * ||h_t - target_t||^2."""
    per_token = (h.float() - target.float()).pow(2).mean(-1)
    mask = attention_mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def steering_direction(dim: int, seed: int) -> torch.Tensor:
    """The fixed random unit vector u: uniform [0, 1) entries from a seeded generator, normalised."""
    r = torch.rand(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return r / r.norm()


@METHODS.register("rmu")
@dataclass
class RMU(Method):
    layer: int = 1
    update_layers: list | None = None
    steering_coef: float = 5.0
    alpha: float = 10.0
    seed: int = 0
    uses_retain = True
    u: torch.Tensor | None = field(default=None, init=False, repr=False)  # set in setup (or first loss)

    def __post_init__(self):
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"rmu.layer must be an integer >= 0 (a decoder layer index), got {self.layer!r}")
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
        if not self.steering_coef > 0:
            raise ValueError(f"rmu.steering_coef must be > 0, got {self.steering_coef}")
        if not self.alpha >= 0:
            raise ValueError(f"rmu.alpha must be >= 0, got {self.alpha}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"rmu.seed must be an integer, got {self.seed!r}")

    @property
    def needs_reference(self) -> bool:
        return self.alpha > 0

    def setup(self, model, ctx):
        layers = decoder_layers(model)
        if self.layer >= len(layers):
            raise ValueError(f"rmu.layer = {self.layer}, but the model has {len(layers)} decoder layers "
                             f"(valid: 0..{len(layers) - 1})")
        model.requires_grad_(False)
        for i in self.update_layers:
            layers[i].mlp.requires_grad_(True)
        self.u = steering_direction(base_model(model).config.hidden_size, self.seed)
        return model

    def loss(self, model, batch):
        forget = batch["forget"]
        h = layer_output(model, self.layer, forget)
        if self.u is None:
            self.u = steering_direction(h.size(-1), self.seed)
        control = (self.steering_coef * self.u).to(h.device)
        forget_mse = token_mse(h, control.expand_as(h), forget["attention_mask"])
        if self.alpha:
            retain = batch["retain"]
            h_retain = layer_output(model, self.layer, retain)
            with torch.no_grad():
                h_frozen = layer_output(self.reference, self.layer, retain)
            retain_mse = token_mse(h_retain, h_frozen, retain["attention_mask"])
        else:
            retain_mse = torch.zeros((), device=forget_mse.device)
        loss = forget_mse + self.alpha * retain_mse
        return loss, {"rmu_forget": forget_mse.item(), "rmu_retain": retain_mse.item()}
