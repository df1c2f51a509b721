"""wagle: the paper's score |(theta - g_r / mu) * g_f| and its mask on hand-worked numbers, g_f the
gradient of the method's own forget term (its retain term left out), and the range checks (its
masking mechanics are saliency's, tested in test_plugin_saliency)."""

from __future__ import annotations

import math

import pytest
import torch

from forgetlab.qa import IGNORE
from forgetlab.train import TrainContext
from forgetlab.unlearning import build_method
from forgetlab.unlearning.plugins.wagle import wagle_scores
from tests.helpers import FORGET, LN, FixedLogits, batch

RETAIN = batch([IGNORE, 0, IGNORE])  # one supervised token: position 0 predicts label 0
# position 0: softmax([ln 3, 0]) = [3/4, 1/4]; position 1: softmax([0, ln 3]) = [1/4, 3/4]
LOGITS = [[[LN(3), 0.0], [0.0, LN(3)], [1.0, -1.0]]]


def test_wagle_score_is_worked():
    theta, g_f, g_r = [torch.tensor([2.0, -1.0, 0.5])], [torch.tensor([0.1, 0.4, -2.0])], [torch.tensor([0.3, 0.1, 0.0])]
    # mu 0.1: theta - g_r / mu = [-1, -2, 0.5]  -> |. * g_f| = [0.1, 0.8, 1.0]
    assert wagle_scores(theta, g_f, g_r, 0.1)[0].tolist() == pytest.approx([0.1, 0.8, 1.0])
    # mu 1: [1.7, -1.1, 0.5] -> [0.17, 0.44, 1.0]
    assert wagle_scores(theta, g_f, g_r, 1.0)[0].tolist() == pytest.approx([0.17, 0.44, 1.0])


def wagle(method: str = "grad_diff", **spec):
    m = build_method({"name": method, "alpha": 5.0, "plugins": [{"name": "wagle", **spec}]})
    plugin, model = m.plugins[0], FixedLogits(LOGITS)
    plugin.setup(model, TrainContext(total_steps=1, forget=[FORGET], retain=[RETAIN]))
    return plugin, model


def test_the_forget_gradient_is_the_methods_forget_term_alone():
    # grad_diff: L = -NLL_forget + 5 * NLL_retain. grad NLL_forget = (softmax - onehot) / 2 tokens:
    # pos 0 (label 1) [3/8, -3/8], pos 1 (label 0) [-3/8, 3/8]; the forget term's gradient is minus that,
    # and the retain term (5 * [-1/4, 1/4] at pos 0) is left out
    plugin, model = wagle()
    g_f = plugin.forget_gradient(model, TrainContext(total_steps=1, forget=[FORGET], retain=[RETAIN]), [model.logits])
    assert g_f[0].flatten().tolist() == pytest.approx([-3 / 8, 3 / 8, 3 / 8, -3 / 8, 0.0, 0.0])
    plugin, model = wagle(forget_loss="nll")  # the authors' code: NLL_forget whatever the method
    g_f = plugin.forget_gradient(model, TrainContext(total_steps=1, forget=[FORGET], retain=[RETAIN]), [model.logits])
    assert g_f[0].flatten().tolist() == pytest.approx([3 / 8, -3 / 8, -3 / 8, 3 / 8, 0.0, 0.0])
    assert model.logits.grad is None  # p.grad untouched


@pytest.mark.parametrize("mu, fraction, expected", [
    # g_r = softmax - onehot at pos 0 (label 0) = [-1/4, 1/4]; |g_f| = [[3/8, 3/8], [3/8, 3/8], 0]
    # mu 1: theta - g_r = [[ln3 + 1/4, -1/4], [0, ln3], [1, -1]] -> S = 3/8 * [[1.349, 1/4], [0, 1.099], 0]
    (1.0, 1 / 6, [[True, False], [False, False], [False, False]]),
    (1.0, 2 / 6, [[True, False], [False, True], [False, False]]),
    (1.0, 3 / 6, [[True, True], [False, True], [False, False]]),
    # mu 1e-6: theta - g_r / mu = [[ln3 + 250000, -250000], [0, ln3], ...]: the retain gradient dominates
    (1e-6, 2 / 6, [[True, True], [False, False], [False, False]]),
    (1e-6, 3 / 6, [[True, True], [False, True], [False, False]]),
])
def test_wagle_mask_on_fixed_logits_is_worked(mu, fraction, expected):
    plugin, _ = wagle(mu=mu, fraction=fraction)
    assert [m.tolist() for m in plugin.masks] == [[expected]]
    assert plugin.summary()["wagle.masked_fraction"] == pytest.approx(round(fraction * 6) / 6)
    threshold = sorted([3 / 8 * (LN(3) + 0.25 / mu), 3 / 8 * 0.25 / mu, 3 / 8 * LN(3), 0, 0, 0])[-round(fraction * 6)]
    assert plugin.summary()["wagle.threshold"] == pytest.approx(threshold, rel=1e-5)


def test_a_method_that_needs_its_reference_must_have_it():
    method = build_method({"name": "npo", "plugins": ["wagle"]})
    with pytest.raises(ValueError, match="needs its reference model"):
        method.plugins[0].setup(FixedLogits(LOGITS), TrainContext(total_steps=1, forget=[FORGET], retain=[RETAIN]))


def test_wagle_range_checks():
    for spec, key in [({"mu": 0.0}, "wagle.mu"), ({"mu": -1e-6}, "wagle.mu"), ({"mu": math.inf}, "wagle.mu"),
                      ({"mu": math.nan}, "wagle.mu"), ({"mu": True}, "wagle.mu"), ({"mu": "1e-6"}, "wagle.mu"),
                      ({"forget_loss": "kl"}, "wagle.forget_loss"), ({"freeze_unmasked": "yes"}, "wagle.freeze_unmasked"),
                      ({"fraction": 0.0}, "wagle.fraction"), ({"fraction": 1.01}, "wagle.fraction"),
                      ({"batches": 1.5}, "wagle.batches"), ({"batches": -1}, "wagle.batches")]:
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            build_method({"name": "npo", "plugins": [{"name": "wagle", **spec}]})
    with pytest.raises(ValueError, match=r"wagle\.forget_loss 'method' cannot apply to idk_dpo"):
        build_method({"name": "idk_dpo", "plugins": ["wagle"]})
    build_method({"name": "idk_dpo", "plugins": [{"name": "wagle", "forget_loss": "nll"}]})
