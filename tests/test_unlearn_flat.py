"""flat on fixed logits, against numbers worked by hand.

The forget answer and the refusal are supervised at disjoint positions, so the gradient's effect
on each can be read apart: 4 positions over a vocabulary of 2,
    forget  [-, 1, 0, -]: position 0 (logits [0, 0]) p = 1/2, position 1 (logits [ln 3, 0]) p = 3/4
    refusal [-, -, -, 0]: position 2 (logits [0, ln 3]) p = 1/4
so P_f = (1/2 + 3/4)/2 = 5/8 and P_e = 1/4 (mean token probabilities).
"""

import math

import pytest
import torch

from forgetlab.unlearning import build_method
from forgetlab.unlearning.flat import DIVERGENCES, mean_token_prob
from tests.helpers import FORGET4, IDK4, LN, LOGITS4, FixedLogits

P_E, P_F = 1 / 4, 5 / 8


def softplus(x):
    return math.log(1 + math.exp(x))


# L = -(g(P_e) - f*(g(P_f))), written out in closed form for each divergence
WORKED = {
    "kl": -(P_E - math.exp(P_F - 1)),
    # g(v) = log 2 - softplus(-v) and f*(g(v)) = softplus(v) - log 2
    "js": softplus(-P_E) + softplus(P_F) - 2 * LN(2),
    "pearson": -(P_E - (P_F**2 / 4 + P_F)),
    "total_variation": -(math.tanh(P_E) / 2 - math.tanh(P_F) / 2),
    "reverse_kl": -(-math.exp(-P_E) - (P_F - 1)),  # f*(g(v)) = v - 1
    "squared_hellinger": -((1 - math.exp(-P_E)) - (math.exp(P_F) - 1)),  # f*(g(v)) = e^v - 1
}


def test_flat_uses_only_forget_data():
    method = build_method({"name": "flat"})
    assert method.forget_views == ("idk",) and not method.uses_retain and not method.needs_reference
    assert set(WORKED) == set(DIVERGENCES)


def test_flat_mean_token_prob_is_worked():
    model = FixedLogits(LOGITS4)
    assert mean_token_prob(model, FORGET4).item() == pytest.approx(P_F, abs=1e-6)
    assert mean_token_prob(model, IDK4).item() == pytest.approx(P_E, abs=1e-6)


@pytest.mark.parametrize("divergence", sorted(WORKED))
def test_flat_loss_is_worked(divergence):
    loss, _ = build_method({"name": "flat", "divergence": divergence}).loss(
        FixedLogits(LOGITS4), {"forget": FORGET4, "idk": IDK4, "retain": None})
    assert loss.item() == pytest.approx(WORKED[divergence], abs=1e-6)


def test_flat_kl_gradient_is_worked():
    model = FixedLogits(LOGITS4)
    build_method({"name": "flat", "divergence": "kl"}).loss(model, {"forget": FORGET4, "idk": IDK4, "retain": None})[0].backward()
    # dL = -dP_e + exp(P_f - 1) dP_f, with d p_y / dz = p_y (onehot(y) - p) / |y|:
    # dP_f: pos 0 (1/2)(1/2)[-1/2, 1/2] = [-1/8, 1/8]; pos 1 (1/2)(3/4)[1/4, -1/4] = [3/32, -3/32]
    # dP_e: pos 2 (1/4)[3/4, -3/4] = [3/16, -3/16]
    w = math.exp(P_F - 1)
    expected = torch.tensor([[[-w / 8, w / 8], [3 * w / 32, -3 * w / 32], [-3 / 16, 3 / 16], [0.0, 0.0]]])
    assert torch.allclose(model.logits.grad, expected, atol=1e-6)


@pytest.mark.parametrize("divergence", sorted(WORKED))
def test_flat_gradient_raises_the_refusal_and_lowers_the_forget_answer(divergence):
    model = FixedLogits(LOGITS4)
    method = build_method({"name": "flat", "divergence": divergence})
    loss, _ = method.loss(model, {"forget": FORGET4, "idk": IDK4, "retain": None})
    loss.backward()
    with torch.no_grad():
        model.logits -= 0.1 * model.logits.grad
        assert mean_token_prob(model, IDK4).item() > P_E
        assert mean_token_prob(model, FORGET4).item() < P_F
        assert method.loss(model, {"forget": FORGET4, "idk": IDK4, "retain": None})[0].item() < loss.item()


def test_flat_range_check():
    with pytest.raises(ValueError, match="flat.divergence"):
        build_method({"name": "flat", "divergence": "hellinger"})
