"""The batched scoring pass against unbatched, by-hand references on a tiny random Llama."""

import math
import os
import zlib

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from forgetlab.eval.passes import grad_norms
from forgetlab.eval.scoring import differing_spans, rouge_l_f1, rouge_l_recall, score_model, score_split
from forgetlab.metrics import EvalInputError
from forgetlab.qa import encode_prompt, encode_qa, token_logprobs
from tests.helpers import ROWS


@pytest.fixture(scope="module")
def scored(model, tok):
    return score_split(model, tok, ROWS, "forget", batch_size=7, max_new_tokens=12)


def unbatched_nll(model, tok, question, answer):
    enc = encode_qa(tok, question, answer)
    ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    logp, mask = token_logprobs(logits, torch.tensor([enc["labels"]]))
    return float(-logp.sum() / mask.sum()), int(mask.sum())


def test_prob_matches_single_unbatched_forward(model, tok, scored):
    for i, row in enumerate(ROWS):
        nll, n = unbatched_nll(model, tok, row["question"], row["answer"])
        assert scored.loc[i, "answer_tokens"] == n
        assert scored.loc[i, "answer_nll"] == pytest.approx(nll, abs=1e-5)
        assert scored.loc[i, "prob"] == pytest.approx(math.exp(-nll), abs=1e-5)
    # answer tokens = " " + answer tokens + eos
    expected = len(tok(" " + ROWS[0]["answer"], add_special_tokens=False)["input_ids"]) + 1
    assert scored.loc[0, "answer_tokens"] == expected


def test_paraphrased_and_perturbed_probs_by_hand(model, tok, scored):
    row = ROWS[2]
    para = math.exp(-unbatched_nll(model, tok, row["question"], row["paraphrased_answer"])[0])
    pert = [math.exp(-unbatched_nll(model, tok, row["question"], p)[0]) for p in row["perturbed_answer"]]
    assert scored.loc[2, "paraphrased_prob"] == pytest.approx(para, rel=1e-5)
    assert scored.loc[2, "perturbed_prob"] == pytest.approx(sum(pert) / len(pert), rel=1e-5)


def test_option_correct_para_is_the_paraphrase_beating_every_perturbation(model, tok, scored):
    # multiple-choice accuracy over the options (paraphrase, perturbations): 1 if the paraphrase's
    # length-normalised probability is strictly the largest, from unbatched forwards of each option
    for i, row in enumerate(ROWS):
        para = math.exp(-unbatched_nll(model, tok, row["question"], row["paraphrased_answer"])[0])
        pert = [math.exp(-unbatched_nll(model, tok, row["question"], p)[0]) for p in row["perturbed_answer"]]
        assert scored.loc[i, "option_correct_para"] == float(para > max(pert))
    # a row whose paraphrase is made the most likely option by construction: the model's own
    # greedy answer to the question as the paraphrase, against the row's perturbations
    row = dict(ROWS[0], paraphrased_answer=scored.loc[0, "generated"])
    probs = [math.exp(-unbatched_nll(model, tok, row["question"], a)[0])
             for a in [row["paraphrased_answer"], *row["perturbed_answer"]]]
    got = score_split(model, tok, [row], "forget", batch_size=7, generate=False)
    assert got.loc[0, "option_correct_para"] == float(probs[0] > max(probs[1:]))


def test_batch_size_does_not_matter(model, tok, scored):
    one = score_split(model, tok, ROWS, "forget", batch_size=1, max_new_tokens=12)
    for col in ["answer_nll", "prob", "paraphrased_prob", "perturbed_prob", "truth_ratio"]:
        assert one[col].tolist() == pytest.approx(scored[col].tolist(), rel=1e-5, abs=1e-6)
    assert one["answer_tokens"].tolist() == scored["answer_tokens"].tolist()
    assert one["generated"].tolist() == scored["generated"].tolist()


def test_truth_ratio_is_the_geometric_mean_over_the_correct_answer(model, tok, scored):
    # TOFU's code / open-unlearning: R = exp(-mean_i NLL(pert_i)) / exp(-NLL(correct)), with the
    # paraphrase correct on forget (and retain, holdout), the answer itself on world_facts/real_authors
    for i, row in enumerate(ROWS):
        para = unbatched_nll(model, tok, row["question"], row["paraphrased_answer"])[0]
        pert = [unbatched_nll(model, tok, row["question"], p)[0] for p in row["perturbed_answer"]]
        expected = math.exp(-sum(pert) / len(pert)) / math.exp(-para)
        assert scored.loc[i, "truth_ratio"] == pytest.approx(expected, rel=1e-4)
        assert scored.loc[i, "truth_ratio_para"] == pytest.approx(expected, rel=1e-4)
    for split in ("world_facts", "real_authors"):
        wf = score_split(model, tok, ROWS, split, batch_size=7, generate=False)
        assert wf["truth_ratio"].tolist() == pytest.approx(
            (wf["answer_nll"] - wf["perturbed_nll"]).map(math.exp).tolist(), rel=1e-9)
        assert wf["truth_ratio_para"].tolist() == pytest.approx(scored["truth_ratio"].tolist(), rel=1e-5)


def test_batched_greedy_equals_unbatched_greedy(model, tok, scored):
    for i, row in enumerate(ROWS):
        ids = torch.tensor([encode_prompt(tok, row["question"])])
        new = []
        with torch.no_grad():
            for _ in range(12):
                nxt = int(model(input_ids=ids).logits[0, -1].argmax())
                if nxt == tok.eos_token_id:
                    break
                new.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        assert scored.loc[i, "generated"] == tok.decode(new, skip_special_tokens=True).strip()


def test_rouge_l_recall_hand_worked(scored):
    # LCS("a b c", "a x c d") = "a c" -> 2 tokens; recall = 2 / |reference| = 2/4
    assert rouge_l_recall("a b c", "a x c d") == pytest.approx(0.5)
    assert rouge_l_recall("", "a x c d") == 0.0
    for _, r in scored.iterrows():
        assert r["rouge_l_recall"] == pytest.approx(rouge_l_recall(r["generated"], r["answer"]))


def test_differing_spans_cut_the_common_prefix_and_suffix():
    assert differing_spans([1, 2, 3, 9, 5], [1, 2, 7, 8, 8, 5]) == (slice(2, 4), slice(2, 5))
    assert differing_spans([4, 1, 2], [5, 1, 2]) == (slice(0, 1), slice(0, 1))
    # nothing left on one side (equal lists, or one the other's prefix): the whole lists
    assert differing_spans([1, 2, 3], [1, 2, 3]) == (slice(0, 3), slice(0, 3))
    assert differing_spans([1, 2, 3], [1, 2, 3, 4]) == (slice(0, 3), slice(0, 4))


def test_value_truth_ratio_and_option_prob_by_hand(model, tok, scored):
    # each pair (paraphrase c, perturbed w): the tokens where they differ, from an unbatched forward each;
    # R_value = exp(mean_w [mean log p(w's span) - mean log p(c's span)]), option = 1 / (1 + sum_w exp(...))
    def tokens_and_logp(question, answer):
        enc = encode_qa(tok, question, answer)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([enc["input_ids"]])).logits
        logp, mask = token_logprobs(logits, torch.tensor([enc["labels"]]))
        keep = mask[0].bool()
        return torch.tensor(enc["input_ids"][1:])[keep].tolist(), logp[0][keep].double()

    for i, row in enumerate(ROWS):
        c_tok, c_logp = tokens_and_logp(row["question"], row["paraphrased_answer"])
        logs = []
        for p in row["perturbed_answer"]:
            w_tok, w_logp = tokens_and_logp(row["question"], p)
            a = len(os.path.commonprefix([c_tok, w_tok]))  # the shared head, then the shared tail of the rest
            b = len(os.path.commonprefix([c_tok[a:][::-1], w_tok[a:][::-1]]))
            if a + b >= min(len(c_tok), len(w_tok)):  # nothing would be left of one side: the whole answers
                a, b = 0, 0
            logs.append(float(w_logp[a:len(w_tok) - b].mean() - c_logp[a:len(c_tok) - b].mean()))
        assert scored.loc[i, "truth_ratio_value"] == pytest.approx(math.exp(sum(logs) / len(logs)), rel=1e-4)
        assert scored.loc[i, "option_prob_value"] == pytest.approx(1 / (1 + sum(math.exp(v) for v in logs)), rel=1e-4)


def test_score_model_columns_and_splits(model, tok):
    no_para = dict(ROWS[3], paraphrased_answer="", perturbed_answer=[])
    df = score_model(model, tok, {"retain": ROWS[:2], "world_facts": [no_para]}, batch_size=4,
                     max_new_tokens=4)
    assert df["split"].tolist() == ["retain", "retain", "world_facts"]
    for col in ["split", "id", "entity_id", "attribute", "question", "answer", "answer_nll",
                "answer_tokens", "prob", "paraphrased_prob", "perturbed_prob", "truth_ratio",
                "generated", "rouge_l_recall"]:
        assert col in df.columns
    assert math.isnan(df.loc[2, "truth_ratio"]) and not math.isnan(df.loc[2, "prob"])
    assert not model.training


# ----------------------------------------------------------------------------- the new per-sample columns

def unbatched_token_stats(model, tok, question, answer):
    """Per answer token: log p(y_t), argmax == y_t, and mean/std of log p under p, by hand."""
    enc = encode_qa(tok, question, answer)
    ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].double()
    labels = torch.tensor(enc["labels"][1:])
    out = []
    for t in range(len(labels)):
        if labels[t] == -100:
            continue
        logp = torch.log_softmax(logits[t], -1)
        p = logp.exp()
        mu = float((p * logp).sum())
        sigma = math.sqrt(float((p * (logp - mu) ** 2).sum()))
        out.append((float(logp[labels[t]]), bool(logp.argmax() == labels[t]), mu, sigma))
    return out


def test_per_token_columns_match_a_by_hand_pass(model, tok, scored):
    for i, row in enumerate(ROWS):
        ref = unbatched_token_stats(model, tok, row["question"], row["answer"])
        got = scored.loc[i]
        assert len(got["answer_token_logp"]) == got["answer_tokens"] == len(ref)
        assert list(got["answer_token_logp"]) == pytest.approx([r[0] for r in ref], abs=1e-5)
        assert list(got["answer_token_match"]) == [r[1] for r in ref]
        assert list(got["answer_token_mu"]) == pytest.approx([r[2] for r in ref], abs=1e-5)
        assert list(got["answer_token_sigma"]) == pytest.approx([r[3] for r in ref], abs=1e-5)
        # the scalar columns are functions of the token columns
        assert got["answer_nll"] == pytest.approx(-sum(got["answer_token_logp"]) / got["answer_tokens"], abs=1e-9)
        assert got["answer_zlib"] == len(zlib.compress(row["answer"].encode("utf-8")))


def test_option_prob_and_rouge_f1(scored):
    row = scored.loc[2]
    # option_prob = P(a) / (P(a) + sum_i P(pert_i)) (open-unlearning's probability_w_options),
    # option_prob_para the same with the paraphrase; perturbed_prob is the mean over the 4 â_i
    assert row["option_prob"] == pytest.approx(row["prob"] / (row["prob"] + 4 * row["perturbed_prob"]))
    assert row["option_prob_para"] == pytest.approx(
        row["paraphrased_prob"] / (row["paraphrased_prob"] + 4 * row["perturbed_prob"]))
    for _, r in scored.iterrows():
        assert r["rouge_l_f1"] == pytest.approx(rouge_l_f1(r["generated"], r["answer"]))


def test_grad_norm_matches_a_per_sample_backward(model, tok):
    # open-unlearning's GradNormAttack: model.train(), one sample at a time, loss = mean NLL of the
    # labelled tokens but the last (the eos), mean over parameter tensors of the gradients' 2-norms
    got = score_split(model, tok, ROWS, "forget", batch_size=3, max_new_tokens=2, grad_norm=True)
    assert not model.training
    model.train()
    for i, row in enumerate(ROWS):
        enc = encode_qa(tok, row["question"], row["answer"])
        labels = list(enc["labels"])
        assert labels[-1] == tok.eos_token_id
        labels[-1] = -100
        model.zero_grad()
        logits = model(input_ids=torch.tensor([enc["input_ids"]])).logits
        logp, mask = token_logprobs(logits, torch.tensor([labels]))
        (-logp.sum() / mask.sum()).backward()
        expected = torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]).mean()
        assert got.loc[i, "grad_norm"] == pytest.approx(float(expected), rel=1e-4)
    model.eval()
    model.zero_grad()
    # off by default (only the membership-inference splits need it)
    assert score_split(model, tok, ROWS[:1], "retain", max_new_tokens=1)["grad_norm"].isna().all()


def test_verbmem_continuation_is_the_unbatched_greedy_continuation(model, tok):
    got = score_split(model, tok, ROWS, "forget", batch_size=3, max_new_tokens=6, verbmem=True)
    for i, row in enumerate(ROWS):
        reply = tok(" " + row["answer"], add_special_tokens=False)["input_ids"]
        h = len(reply) // 2
        assert got.loc[i, "verbmem_prefix_tokens"] == h
        assert got.loc[i, "verbmem_continuation"] == tok.decode(reply[h:], skip_special_tokens=True).strip()
        ids = torch.tensor([encode_prompt(tok, row["question"]) + reply[:h]])
        new = []
        with torch.no_grad():
            for _ in range(6):
                nxt = int(model(input_ids=ids).logits[0, -1].argmax())
                if nxt == tok.eos_token_id:
                    break
                new.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        assert got.loc[i, "verbmem_generated"] == tok.decode(new, skip_special_tokens=True).strip()
        assert got.loc[i, "verbmem_rouge_l_f1"] == pytest.approx(
            rouge_l_f1(got.loc[i, "verbmem_generated"], got.loc[i, "verbmem_continuation"]))


def test_timings_split_the_three_passes(model, tok):
    timings = {}
    score_split(model, tok, ROWS[:2], "forget", max_new_tokens=2, grad_norm=True, verbmem=True, timings=timings)
    assert set(timings) == {"logprob", "generation", "gradnorm"} and all(v > 0 for v in timings.values())


def test_empty_split_and_empty_answer_are_clear_errors(model, tok):
    with pytest.raises(EvalInputError, match="split 'forget' has no rows"):
        score_split(model, tok, [], "forget")
    with pytest.raises(EvalInputError, match="split 'retain', row 7: empty answer"):
        score_split(model, tok, [dict(ROWS[0], id=7, answer="  ")], "retain")


def test_likelihood_only_form_for_trajectories(model, tok, scored):
    cheap = score_split(model, tok, ROWS, "forget", batch_size=7, generate=False, verbmem=True)
    assert cheap["generated"].tolist() == [""] * len(ROWS)
    assert cheap["rouge_l_recall"].isna().all() and cheap["verbmem_rouge_l_f1"].isna().all()
    assert cheap["prob"].tolist() == pytest.approx(scored["prob"].tolist(), rel=1e-9)


def test_grad_norm_runs_in_train_mode_with_seeded_dropout(tok):
    """With dropout in the model, GradNorm (train mode, as open-unlearning) differs from eval mode,
    and the same seed gives the same norms while another seed does not; the global RNG is untouched."""
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      attention_dropout=0.3, pad_token_id=tok.pad_token_id)
    dropout_model = LlamaForCausalLM(cfg).eval()
    encoded = [encode_qa(tok, r["question"], r["answer"]) for r in ROWS]
    state = torch.random.get_rng_state()
    first = grad_norms(dropout_model, encoded, tok.pad_token_id, batch_size=4, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state) and not dropout_model.training
    assert grad_norms(dropout_model, encoded, tok.pad_token_id, batch_size=4, seed=5) == first
    assert grad_norms(dropout_model, encoded, tok.pad_token_id, batch_size=4, seed=6) != first
    no_dropout = grad_norms(dropout_model, encoded, tok.pad_token_id, batch_size=4, train=False)
    assert all(a != pytest.approx(b, rel=1e-6) for a, b in zip(first, no_dropout))
