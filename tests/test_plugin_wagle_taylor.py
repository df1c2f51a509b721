"""wagle_taylor: the first-order attribution score and its mask on hand-worked numbers (its masking mechanics are
saliency's, tested in test_plugin_saliency)."""

from __future__ import annotations

import pytest
import torch

from forgetlab.qa import IGNORE
from forgetlab.registry import build
from forgetlab.train import TrainContext
from forgetlab.unlearning import build_method
from forgetlab.unlearning.plugins import PLUGINS
from forgetlab.unlearning.plugins.wagle_taylor import attribution_scores
from tests.helpers import FORGET, LN, FixedLogits, batch

RETAIN = batch([IGNORE, 0, IGNORE])  # one supervised token: position 0 predicts label 0
# position 0: softmax([ln 3, 0]) = [3/4, 1/4]; position 1: softmax([0, ln 3]) = [1/4, 3/4]
LOGITS = [[[LN(3), 0.0], [0.0, LN(3)], [1.0, -1.0]]]


def test_attribution_score_is_worked():
    theta, g_f, g_r = [torch.tensor([2.0, -1.0, 0.5])], [torch.tensor([0.1, 0.4, -2.0])], [torch.tensor([0.3, 0.1, 0.0])]
    # |theta g_f| = [0.2, 0.4, 1.0], |theta g_r| = [0.6, 0.1, 0]
    assert attribution_scores(theta, g_f, g_r, 1.0)[0].tolist() == pytest.approx([-0.4, 0.3, 1.0])
    assert attribution_scores(theta, g_f, g_r, 0.5)[0].tolist() == pytest.approx([-0.1, 0.35, 1.0])
    assert attribution_scores(theta, g_f, g_r, 0.0)[0].tolist() == pytest.approx([0.2, 0.4, 1.0])


def taylor_mask(**spec):
    plugin = build(PLUGINS, {"name": "wagle_taylor", **spec})
    plugin.setup(FixedLogits(LOGITS), TrainContext(total_steps=1, forget=[FORGET], retain=[RETAIN]))
    return [m.tolist() for m in plugin.masks], plugin


@pytest.mark.parametrize("gamma, fraction, expected", [
    # g_f = (softmax - onehot) / 2 tokens: pos 0 (label 1) [3/8, -3/8], pos 1 (label 0) [-3/8, 3/8], pos 2 0
    # g_r = softmax - onehot at pos 0 (label 0): [-1/4, 1/4]; elsewhere 0
    # |theta g_f| = [[3/8 ln3, 0], [0, 3/8 ln3], [0, 0]];  |theta g_r| = [[1/4 ln3, 0], [0, 0], [0, 0]]
    (1.0, 1 / 6, [[False, False], [False, True], [False, False]]),  # s = [[1/8 ln3, 0], [0, 3/8 ln3], 0]
    (1.0, 2 / 6, [[True, False], [False, True], [False, False]]),
    (0.0, 1 / 6, [[True, False], [False, False], [False, False]]),  # a 3/8 ln3 tie: the first by position
    (2.0, 2 / 6, [[False, True], [False, True], [False, False]]),  # [0][0] = -1/8 ln3 < 0: the first 0 is [0][1]
])
def test_wagle_taylor_mask_on_fixed_logits_is_worked(gamma, fraction, expected):
    masks, plugin = taylor_mask(gamma=gamma, fraction=fraction)
    assert masks == [[expected]]
    assert plugin.summary()["wagle_taylor.masked_fraction"] == pytest.approx(round(fraction * 6) / 6)


def test_wagle_taylor_range_checks():
    for spec, key in [({"gamma": -0.1}, "wagle_taylor.gamma"), ({"gamma": float("inf")}, "wagle_taylor.gamma"),
                      ({"fraction": 0.0}, "wagle_taylor.fraction"), ({"fraction": 1.01}, "wagle_taylor.fraction"),
                      ({"batches": 1.5}, "wagle_taylor.batches")]:
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            build_method({"name": "npo", "plugins": [{"name": "wagle_taylor", **spec}]})
