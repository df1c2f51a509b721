"""token_weighted (train setting): each batch's mean LM loss scaled by its supervised tokens over the
run's mean per batch, so that over an epoch every supervised token weighs the same; worked by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from forgetlab.config import ConfigError, validate_schema
from forgetlab.losses import lm_loss
from forgetlab.qa import IGNORE
from forgetlab.recipes.finetune import token_norm
from tests.helpers import smoke_config

pytestmark = pytest.mark.unit

LN = math.log
# next-token logits over a vocabulary of 2, whatever the input: position 0 [0, 0], position 1 [ln 3, 0]
LOGITS = [[[0.0, 0.0], [LN(3), 0.0], [0.0, 0.0]]]


class Fixed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(LOGITS))

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=self.logits.expand(input_ids.size(0), -1, -1))


def batch(labels):
    labels = torch.tensor([labels])
    return {"input_ids": labels.clamp(min=0), "labels": labels, "attention_mask": torch.ones_like(labels)}


# batch A: two supervised tokens, p(1) = 1/2 at position 0 and p(0) = 3/4 at position 1
# batch B: one supervised token, p(1) = 1/4 at position 1
A, B = batch([IGNORE, 1, 0]), batch([IGNORE, IGNORE, 1])
NLL_A, NLL_B = (LN(2) + LN(4 / 3)) / 2, LN(4)
TOKENS_PER_BATCH = (2 + 1) / 2


def test_the_weighted_epoch_is_the_mean_over_every_supervised_token():
    model = Fixed()
    (a, pa), (b, pb) = (lm_loss(model, x, tokens_per_batch=TOKENS_PER_BATCH) for x in (A, B))
    assert a.item() == pytest.approx(NLL_A * 2 / 1.5, abs=1e-6)
    assert b.item() == pytest.approx(NLL_B * 1 / 1.5, abs=1e-6)
    assert (a.item() + b.item()) / 2 == pytest.approx((LN(2) + LN(4 / 3) + LN(4)) / 3, abs=1e-6)
    assert float(pa["token_weight"]) == pytest.approx(2 / 1.5) and float(pb["token_weight"]) == pytest.approx(1 / 1.5)


def test_without_it_each_batch_is_its_own_mean():
    model = Fixed()
    a, b = (lm_loss(model, x)[0].item() for x in (A, B))
    assert (a, b) == (pytest.approx(NLL_A, abs=1e-6), pytest.approx(NLL_B, abs=1e-6))
    assert (a + b) / 2 != pytest.approx((LN(2) + LN(4 / 3) + LN(4)) / 3, abs=1e-3)


def test_the_divisor_is_the_mean_supervised_tokens_per_batch():
    # supervised = labels after the first that are not IGNORE: 2, 1 and 3 tokens, over 2 batches
    examples = [{"labels": [IGNORE, 5, 6]}, {"labels": [IGNORE, IGNORE, 7]}, {"labels": [IGNORE, 1, 2, 3]}]
    assert token_norm(examples, 2) == 3.0


def test_a_non_boolean_setting_is_rejected_naming_the_key():
    config = smoke_config()
    config["finetune"]["token_weighted"] = "yes"
    with pytest.raises(ConfigError, match=r"finetune\.token_weighted"):
        validate_schema(config)
    config["finetune"]["token_weighted"] = True
    validate_schema(config)
