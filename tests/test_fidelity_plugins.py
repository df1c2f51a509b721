"""Fidelity of the plug-ins to their papers' formulas, on a fixed two-layer model (an embedding and
a linear read-out) whose gradients are written out here in numpy; every reference value below comes
from those few lines, never from the plug-ins' output:

    saliency      m = top-s of |g_f|                                  (SalUn, Eq. (3))
    wagle         m = top-s of |(theta - g_r / mu) * g_f|              (WAGLE's closed-form score)
    wagle_taylor  m = top-s of |theta * g_f| - gamma * |theta * g_r|    (our first-order variant)
    gu_projection g = g_R + g_F - R (R^T M R)^-1 R^T M g_F             (GU, M = I or Adam's 1/(sqrt(v_hat)+eps))
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from forgetlab.qa import IGNORE
from forgetlab.train import TrainContext
from forgetlab.unlearning import build_method
from forgetlab.unlearning.plugins.gu_projection import (
    adam_metric,
    orthonormal_basis,
    project_out,
)

V, H = 7, 3


class TwoLayer(torch.nn.Module):
    """logits = W E[ids] + b."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.Embedding(V, H).double()
        self.out = torch.nn.Linear(H, V).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.out(self.embed(input_ids)))


def make_batch(ids, labels):
    ids = torch.tensor(ids)
    return {"input_ids": ids, "labels": torch.tensor(labels), "attention_mask": torch.ones_like(ids)}


FORGET = [make_batch([[1, 2, 3, 4], [5, 6, 0, 1]], [[IGNORE, 2, 3, 4], [IGNORE, IGNORE, 0, 1]]),
          make_batch([[2, 2, 5, 6], [3, 1, 4, 0]], [[IGNORE, IGNORE, 5, 6], [IGNORE, 1, 4, IGNORE]])]
RETAIN = [make_batch([[6, 5, 4, 3], [0, 1, 2, 2]], [[IGNORE, 5, 4, 3], [IGNORE, IGNORE, IGNORE, 2]]),
          make_batch([[4, 4, 1, 0], [2, 3, 6, 5]], [[IGNORE, 4, 1, 0], [IGNORE, IGNORE, 6, 5]]),
          make_batch([[1, 3, 5, 0], [6, 0, 2, 4]], [[IGNORE, 3, IGNORE, 0], [IGNORE, 0, 2, IGNORE]])]


def theta(model) -> np.ndarray:
    return np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])


def np_grad(model, batch, per: str = "token") -> np.ndarray:
    """grad of the mean NLL over supervised tokens (per="token"), or of the mean over rows of the
    summed answer NLL (per="sequence", i.e. -grad mean log pi(y|x)), in parameter order (E, W, b)."""
    E, W, b = (p.detach().numpy() for p in model.parameters())
    ids, labels = batch["input_ids"].numpy(), batch["labels"].numpy()
    h = E[ids[:, :-1]]                                        # (B, T-1, H)
    logits = h @ W.T + b
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    target, mask = labels[:, 1:], labels[:, 1:] != IGNORE
    d = p.copy()
    rows, cols = np.nonzero(mask)
    d[rows, cols, target[rows, cols]] -= 1.0                  # softmax - onehot
    d *= mask[..., None] / (mask.sum() if per == "token" else len(ids))
    dE = np.zeros_like(E)
    np.add.at(dE, ids[:, :-1], d @ W)
    return np.concatenate([dE.ravel(), np.einsum("btv,bth->vh", d, h).ravel(), d.sum((0, 1))])


def np_top(scores: np.ndarray, fraction: float) -> np.ndarray:
    s = max(1, int(np.floor(fraction * scores.size + 0.5)))
    mask = np.zeros(scores.size, dtype=bool)
    mask[np.argsort(-scores, kind="stable")[:s]] = True       # ties: the first in flat order
    return mask


def plugin_mask(spec: dict, method: str = "grad_diff", **method_params) -> np.ndarray:
    model = TwoLayer()
    m = build_method({"name": method, **method_params, "plugins": [spec]})
    m.reference = copy.deepcopy(model).requires_grad_(False)
    plugin = m.plugins[0]
    plugin.setup(model, TrainContext(total_steps=1, forget=FORGET, retain=RETAIN))
    expected_fraction = np_top(np.zeros(49), spec["fraction"]).mean()
    assert plugin.summary()[f"{spec['name']}.masked_fraction"] == pytest.approx(expected_fraction)
    return np.concatenate([mk.numpy().ravel() for mk in plugin.masks])


def mean_grad(batches, per: str = "token") -> np.ndarray:
    model = TwoLayer()
    return np.mean([np_grad(model, b, per) for b in batches], axis=0)


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.6])
def test_saliency_is_salun_top_gradient_magnitude(fraction):
    g_f = mean_grad(FORGET)
    expected = np_top(np.abs(g_f), fraction)
    assert (plugin_mask({"name": "saliency", "fraction": fraction}) == expected).all()


@pytest.mark.parametrize("mu", [1e-6, 1e-2, 1.0])
@pytest.mark.parametrize("fraction", [0.1, 0.4])
def test_wagle_is_the_papers_score(mu, fraction):
    # grad_diff's forget term is -NLL_forget; the retain gradient is NLL_retain's over as many batches (2)
    g_f, g_r = -mean_grad(FORGET), mean_grad(RETAIN[:2])
    expected = np_top(np.abs((theta(TwoLayer()) - g_r / mu) * g_f), fraction)
    assert (plugin_mask({"name": "wagle", "fraction": fraction, "mu": mu}) == expected).all()


def test_wagle_takes_the_methods_own_forget_term():
    # NPO at theta = theta_ref: grad = 2 sigma(0) * grad(-log pi)... = the mean over rows of the summed
    # answer-token NLL gradient, not the token mean: another direction, another mask
    g_r = mean_grad(RETAIN[:2])
    scores = {per: np.abs((theta(TwoLayer()) - g_r / 1e-2) * mean_grad(FORGET, per)) for per in ("token", "sequence")}
    masks = {per: np_top(s, 0.3) for per, s in scores.items()}
    assert (masks["token"] != masks["sequence"]).any()  # the case tells the two apart
    spec = {"name": "wagle", "fraction": 0.3, "mu": 1e-2}
    assert (plugin_mask(spec, "npo") == masks["sequence"]).all()
    assert (plugin_mask({**spec, "forget_loss": "nll"}, "npo") == masks["token"]).all()  # the authors' code


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_wagle_taylor_is_its_first_order_score(gamma):
    t, g_f, g_r = theta(TwoLayer()), mean_grad(FORGET), mean_grad(RETAIN[:2])
    expected = np_top(np.abs(t * g_f) - gamma * np.abs(t * g_r), 0.3)
    assert (plugin_mask({"name": "wagle_taylor", "fraction": 0.3, "gamma": gamma}) == expected).all()


def np_project(g, R, m):
    """g - R (R^T M R)^-1 R^T M g, M = diag(m)."""
    return g - R @ np.linalg.solve(R.T @ (m[:, None] * R), R.T @ (m * g))


@pytest.mark.parametrize("metric", ["euclidean", "adam"])
def test_projection_in_closed_form(metric):
    rng = np.random.default_rng(3)
    R, g = rng.normal(size=(40, 3)), rng.normal(size=40)
    m = np.exp(rng.normal(size=40) * 2) if metric == "adam" else np.ones(40)
    M = torch.tensor(m) if metric == "adam" else None
    basis = orthonormal_basis([torch.tensor(R[:, j]) for j in range(3)], M)
    ours, _ = project_out(torch.tensor(g), basis, M)
    assert np.allclose(ours.numpy(), np_project(g, R, m), rtol=0, atol=1e-12)


def test_adam_metric_is_adams_preconditioner():
    p = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    opt = torch.optim.AdamW([p], lr=0.1, betas=(0.9, 0.95), eps=1e-8)
    assert adam_metric(opt, [p]) is None  # no state before the first step
    grads, v = np.array([[1.0, -2, 0.5, 0, 3], [0.1, 0.2, -0.3, 0, 1], [2, 0, 0, 0, -1]]), np.zeros(5)
    for t, gr in enumerate(grads, 1):
        p.grad = torch.tensor(gr)
        opt.step()
        v = 0.95 * v + 0.05 * gr**2
        assert np.allclose(adam_metric(opt, [p]).numpy(), 1 / (np.sqrt(v / (1 - 0.95**t)) + 1e-8), rtol=1e-12)


@pytest.mark.parametrize("metric", ["euclidean", "adam"])
def test_gu_gradient_is_the_papers_joint_update(metric):
    # grad_diff, gamma 1, alpha 2: g = 2 g_R + P(g_F); two steps, the second in Adam's geometry
    model = TwoLayer()
    spec = {"name": "gu_projection", "k": 2, "metric": metric}
    method = build_method({"name": "grad_diff", "alpha": 2.0, "plugins": [spec]})
    plugin = method.plugins[0]
    plugin.setup(model, TrainContext(total_steps=2, retain=RETAIN * 2))  # draws RETAIN[0:2], then RETAIN[2], RETAIN[0]
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    m, v = np.ones(49), np.zeros(49)
    steps = [(FORGET[0], RETAIN[1], RETAIN[0:2]), (FORGET[1], RETAIN[2], RETAIN[2:] + RETAIN[:1])]
    for step, (forget, retain, basis) in enumerate(steps):
        R = np.stack([np_grad(model, b) for b in basis], 1)
        g_f, g_r = -np_grad(model, forget), 2 * np_grad(model, retain)
        expected = g_r + np_project(g_f, R, m)
        opt.zero_grad(set_to_none=True)
        method.loss(model, {"forget": forget, "retain": retain})[0].backward()
        ours = np.concatenate([p.grad.numpy().ravel() for p in model.parameters()])
        # (the loss is computed in float32: forgetlab.losses.token_nll)
        assert np.allclose(ours, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
        plugin.before_step(model, step, opt)
        opt.step()
        plugin.after_step(model, step, opt)
        v = 0.95 * v + 0.05 * ours**2
        if metric == "adam":  # the next step's M: Adam's denominator after this step
            m = 1 / (np.sqrt(v / (1 - 0.95 ** (step + 1))) + 1e-8)
