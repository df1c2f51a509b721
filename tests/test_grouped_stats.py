"""The packed likelihood pass (forgetlab.eval.passes.grouped_token_stats): a QA row's answers are
scored after one shared run of its prompt, and give the values of scoring each answer on its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forgetlab.eval import passes
from forgetlab.eval.passes import grouped_token_stats, pack, packed_mask, shared_prefix, token_stats
from forgetlab.qa import IGNORE, encode_qa

I = IGNORE


def test_pack_worked_example():
    # prompt [1, 2, 3] (unsupervised), continuations [4, 5] and [6]
    a = {"input_ids": [1, 2, 3, 4, 5], "labels": [I, I, I, 4, 5]}
    b = {"input_ids": [1, 2, 3, 6], "labels": [I, I, I, 6]}
    assert shared_prefix([a, b]) == 3
    ids, pos, seg, targets = pack([a, b])
    assert ids == [1, 2, 3, 4, 5, 6]
    assert pos == [0, 1, 2, 3, 4, 3]          # b's continuation starts where the prompt ends
    assert seg == [-1, -1, -1, 0, 0, 1]
    # a's 4 is predicted at the prompt's last token (index 2), its 5 at its 4 (index 3); b's 6 at index 2
    assert targets == [(2, 4), (3, 5), (2, 6)]


def test_shared_prefix_stops_at_a_difference_or_a_supervised_token():
    a = {"input_ids": [1, 2, 3, 4], "labels": [I, I, I, 4]}
    assert shared_prefix([a, {"input_ids": [1, 2, 9, 4], "labels": [I, I, I, 4]}]) == 2
    assert shared_prefix([a, {"input_ids": [1, 2, 3, 4], "labels": [I, I, 3, 4]}]) == 2


def test_packed_mask_worked_example():
    # one packed row [p, p, c0, c0, c1] and padding to width 6
    mask = packed_mask([[-1, -1, 0, 0, 1]], 6, torch.float32, "cpu")[0, 0]
    allowed = (mask == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],   # prompt token 0
        [1, 1, 0, 0, 0, 0],   # prompt token 1
        [1, 1, 1, 0, 0, 0],   # c0's first token: the prompt and itself
        [1, 1, 1, 1, 0, 0],   # c0's second token
        [1, 1, 0, 0, 1, 0],   # c1: the prompt and itself, never c0
        [0, 0, 0, 0, 0, 1],   # padding: itself only
    ]
    assert (mask[mask != 0] == torch.finfo(torch.float32).min).all()


def groups_of(tok, rows):
    return [[encode_qa(tok, q, a) for a in answers] for q, answers in rows]


ROWS = [("Where was Ann born?", ["Ann was born in Oslo.", "Ann came from Oslo.", "Ann came from Rome.", "Ann came from Lima."]),
        ("What does Bo do?", ["Bo is a baker."]),
        ("Which pet has Cy?", ["Cy has a cat.", "Cy keeps a dog as a pet, a big one."])]


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_grouped_equals_one_sequence_at_a_time(model, tok, batch_size):
    assert model.config._attn_implementation in passes.PACKED_ATTENTION  # the packed path runs
    groups = groups_of(tok, ROWS)
    got = grouped_token_stats(model, groups, tok.pad_token_id, batch_size)
    assert [len(g) for g in got] == [len(g) for g in groups]
    for g_enc, g_got in zip(groups, got):
        for enc, s in zip(g_enc, g_got):
            ref = token_stats(model, [enc], tok.pad_token_id, 1)[0]  # the answer scored on its own
            assert len(s.logp) == len(ref.logp) == sum(1 for x in enc["labels"][1:] if x != IGNORE)
            np.testing.assert_allclose(s.logp, ref.logp, atol=1e-5)
            np.testing.assert_allclose(s.mu, ref.mu, atol=1e-5)
            np.testing.assert_allclose(s.sigma, ref.sigma, atol=1e-5)
            assert (s.match == ref.match).all()


def test_attention_without_4d_masks_scores_each_answer_on_its_own(model, tok, monkeypatch):
    monkeypatch.setattr(passes, "PACKED_ATTENTION", ())  # e.g. flash attention
    groups = groups_of(tok, ROWS)
    got = grouped_token_stats(model, groups, tok.pad_token_id, 4)
    flat = token_stats(model, [e for g in groups for e in g], tok.pad_token_id, 4)
    assert [s.logp.tolist() for g in got for s in g] == [s.logp.tolist() for s in flat]
