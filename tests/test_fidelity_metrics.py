"""Every metric against a worked example written from the paper's or open-unlearning's documented
formula (locuslab/open-unlearning, src/evals/metrics/{memorization,privacy,utility}.py and
mia/*.py; configs/eval/tofu_metrics/*.yaml), computed by hand or with a few lines of independent
numpy here, never from forgetlab's own helpers. A per-sample table is built from raw NLLs and
per-token values the way open-unlearning sees a batch; the metrics must reproduce the reference."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import hmean, ks_2samp

from forgetlab.eval.scoring import score_split
from forgetlab.metrics import METRICS, compute_metrics
from forgetlab.qa import encode_qa
from tests.helpers import ROWS


def frame(rows: dict[str, list[dict]]) -> pd.DataFrame:
    return pd.DataFrame([{"split": s, "id": f"{s}{i}", **r} for s, rs in rows.items() for i, r in enumerate(rs)])


# ----------------------------------------------------------------------------- reference formulas
# (open-unlearning, written out independently)

def ou_truth_ratio(correct_avg_loss, wrong_avg_losses):
    """memorization.truth_ratio: wrong = exp(-mean(avg losses)), correct = exp(-avg loss),
    tr = wrong / (correct + 1e-10)."""
    return np.exp(-np.mean(wrong_avg_losses)) / (np.exp(-correct_avg_loss) + 1e-10)


def closer_to_1_better(tr):
    return np.mean(np.minimum(tr, 1 / (np.asarray(tr) + 1e-10)))


def true_better(tr):
    return np.mean(np.maximum(0, 1 - np.asarray(tr)))


def ou_prob_w_options(correct_avg_loss, wrong_avg_losses):
    """memorization.probability_w_options: correct / (correct + sum(wrong) + 1e-10) of exp(-avg loss)."""
    c, w = np.exp(-correct_avg_loss), np.exp(-np.asarray(wrong_avg_losses))
    return c / (c + w.sum() + 1e-10)


def auc(member_scores, nonmember_scores):
    """P(member score > non-member score) + 1/2 P(tie), i.e. roc_auc_score by pair counting."""
    wins = sum((m > n) + 0.5 * (m == n) for m in member_scores for n in nonmember_scores)
    return wins / (len(member_scores) * len(nonmember_scores))


# ----------------------------------------------------------------------------- a QA table from NLLs

def qa_row(answer_nll, para_nll, pert_nlls, split, rouge=0.5):
    """One row as forgetlab.eval.scoring writes it, from the raw per-answer NLLs."""
    pert = np.asarray(pert_nlls, dtype=float)
    correct = answer_nll if split in ("world_facts", "real_authors") else para_nll
    return {"answer_nll": answer_nll, "prob": math.exp(-answer_nll), "paraphrased_nll": para_nll,
            "perturbed_nll": pert.mean(), "truth_ratio": math.exp(correct - pert.mean()),
            "truth_ratio_para": math.exp(para_nll - pert.mean()),
            "option_prob": math.exp(-answer_nll) / (math.exp(-answer_nll) + np.exp(-pert).sum()),
            "option_prob_para": math.exp(-para_nll) / (math.exp(-para_nll) + np.exp(-pert).sum()),
            "rouge_l_recall": rouge}


NLLS = {  # split -> [(answer_nll, paraphrased_nll, perturbed_nlls, rouge-L recall)]
    "forget": [(0.2, 0.5, [1.0, 2.0, 0.4], 0.9), (1.5, 1.2, [1.1, 1.4, 1.0], 0.3), (0.9, 0.8, [0.7, 2.5, 1.9], 0.6)],
    "holdout": [(1.7, 1.6, [1.5, 1.9, 1.2], 0.2), (2.1, 1.4, [1.3, 2.2, 1.8], 0.1)],
    "retain": [(0.3, 0.6, [1.6, 2.0, 1.1], 1.0), (0.4, 0.9, [0.8, 0.7, 1.3], 0.75)],
    "real_authors": [(0.7, 0.5, [0.9, 1.6, 1.2], 0.5), (1.1, 0.6, [0.8, 1.0, 2.4], 0.25)],
    "world_facts": [(0.5, 0.9, [2.0, 1.7, 1.9], 0.8), (0.6, 0.4, [0.5, 0.9, 1.5], 0.4)],
}


@pytest.fixture(scope="module")
def samples():
    return frame({s: [qa_row(a, p, q, s, r) for a, p, q, r in rows] for s, rows in NLLS.items()})


def reference_tr(split, para=False):
    use_answer = split in ("world_facts", "real_authors") and not para
    return np.array([ou_truth_ratio(a if use_answer else p, q) for a, p, q, _ in NLLS[split]])


# ----------------------------------------------------------------------------- truth ratio, utility

def test_truth_ratio_metrics_follow_open_unlearning(samples):
    got = compute_metrics(["forget_truth_ratio", "holdout_truth_ratio", "retain_truth_ratio", "world_facts_truth_ratio",
                           "real_authors_truth_ratio", "world_facts_truth_ratio_para",
                           "real_authors_truth_ratio_para"], samples)
    # forget_Truth_Ratio: correct = paraphrase, closer_to_1_better; holdout scored the same way
    assert got["forget_truth_ratio"] == pytest.approx(closer_to_1_better(reference_tr("forget")), rel=1e-8)
    assert got["holdout_truth_ratio"] == pytest.approx(closer_to_1_better(reference_tr("holdout")), rel=1e-8)
    # retain_Truth_Ratio: correct = paraphrase; ra/wf_Truth_Ratio: correct = the answer; true_better
    for split in ("retain", "world_facts", "real_authors"):
        assert got[f"{split}_truth_ratio"] == pytest.approx(true_better(reference_tr(split)), rel=1e-8)
    for split in ("world_facts", "real_authors"):
        assert got[f"{split}_truth_ratio_para"] == pytest.approx(true_better(reference_tr(split, para=True)), rel=1e-8)


def test_forget_quality_is_the_ks_test_of_forget_truth_ratios(samples):
    oracle = frame({"forget": [qa_row(a + 1, p + 1, [x + 0.5 * i for i, x in enumerate(q)], "forget")
                               for a, p, q, _ in NLLS["forget"]]})
    oracle_tr = [ou_truth_ratio(p + 1, [x + 0.5 * i for i, x in enumerate(q)]) for _, p, q, _ in NLLS["forget"]]
    expected = ks_2samp(reference_tr("forget"), oracle_tr).pvalue
    assert METRICS.get("forget_quality")(samples, oracle) == pytest.approx(expected, rel=1e-8)


def test_option_probabilities_normalise_over_the_answer_and_the_perturbed(samples):
    for split, key in (("world_facts", "wf"), ("real_authors", "ra")):
        expected = np.mean([ou_prob_w_options(a, q) for a, _, q, _ in NLLS[split]])
        assert METRICS.get(f"{split}_option_prob")(samples) == pytest.approx(expected, rel=1e-8), key
        expected_para = np.mean([ou_prob_w_options(p, q) for _, p, q, _ in NLLS[split]])
        assert METRICS.get(f"{split}_option_prob_para")(samples) == pytest.approx(expected_para, rel=1e-8)


def test_model_utility_is_the_harmonic_mean_of_nine_terms(samples):
    def mean_rouge(split):
        return np.mean([r for *_, r in NLLS[split]])

    terms = [np.mean([math.exp(-a) for a, *_ in NLLS["retain"]]), mean_rouge("retain"), true_better(reference_tr("retain"))]
    for split in ("real_authors", "world_facts"):  # model_utility.yaml: ra then wf, Prob_normalised, ROUGE, TR
        terms += [np.mean([ou_prob_w_options(a, q) for a, _, q, _ in NLLS[split]]), mean_rouge(split),
                  true_better(reference_tr(split))]
    assert len(terms) == 9
    assert METRICS.get("model_utility")(samples) == pytest.approx(hmean(terms), rel=1e-8)
    para = terms[:3]
    for split in ("real_authors", "world_facts"):
        para += [np.mean([ou_prob_w_options(p, q) for _, p, q, _ in NLLS[split]]), mean_rouge(split),
                 true_better(reference_tr(split, para=True))]
    assert METRICS.get("model_utility_para")(samples) == pytest.approx(hmean(para), rel=1e-8)


def test_split_means_are_prob_and_rouge_l_recall(samples):
    for split in NLLS:
        assert METRICS.get(f"{split}_prob")(samples) == pytest.approx(np.mean([math.exp(-a) for a, *_ in NLLS[split]]))
        assert METRICS.get(f"{split}_rouge")(samples) == pytest.approx(np.mean([r for *_, r in NLLS[split]]))


# ----------------------------------------------------------------------------- token-level metrics
# Each answer: per-token values of " " + answer, then the eos's; open-unlearning drops the eos.

EOS_LOGP, EOS_MATCH = -7.0, False


def token_table(forget, holdout):
    """forget/holdout: lists of (logp list, match list, mu list, sigma list) without the eos."""
    rows = []
    for split, answers in (("forget", forget), ("holdout", holdout)):
        for i, (lp, match, mu, sd) in enumerate(answers):
            rows.append({"split": split, "id": f"{split}{i}", "answer_token_logp": [*lp, EOS_LOGP],
                         "answer_token_match": [*match, EOS_MATCH], "answer_token_mu": [*mu, 0.0],
                         "answer_token_sigma": [*sd, 1e-9]})
    return pd.DataFrame(rows)


T, F = True, False
FORGET = [([-0.1, -0.5, -0.2, -2.0, -0.3], [T, F, T, T, T], [-1.0, -1.2, -0.8, -1.5, -1.1], [0.5, 0.4, 0.3, 0.6, 0.2]),
          ([-1.5, -0.2, -3.0], [F, T, F], [-1.0, -0.9, -2.0], [0.7, 0.0, 0.5]),
          ([-0.05, -0.01, -0.02, -0.03], [T, T, T, T], [-0.5, -0.4, -0.3, -0.2], [0.3, 0.3, 0.2, 0.1])]
HOLDOUT = [([-2.5, -1.0, -0.7], [F, T, T], [-1.4, -1.0, -0.9], [0.8, 0.5, 0.4]),
           ([-0.4, -1.8, -2.2, -0.9, -1.1, -0.6], [T, F, F, T, F, T], [-1.0] * 6, [0.5] * 6)]


def ou_min_k(lp, k=0.4):
    """MinKProbAttack.compute_score: -mean of the max(1, int(n k)) smallest token log-probs."""
    return -np.mean(np.sort(lp)[:max(1, int(len(lp) * k))])


def ou_min_k_plus_plus(lp, mu, sd, k=0.4):
    """MinKPlusPlusAttack.compute_score, with sigma^2 = E[lp^2] - mu^2 written as sd^2, clamped at 1e-6."""
    scores = (np.asarray(lp) - np.asarray(mu)) / np.sqrt(np.maximum(np.square(sd), 1e-6))
    return -np.mean(np.sort(scores)[:max(1, int(len(scores) * k))])


def ou_auc(score, forget, holdout):
    """mia_auc: labels forget 0, holdout 1 on scores that are higher for non-members: the same as
    the AUC of -score with forget as the positive class."""
    return auc([-score(*a) for a in forget], [-score(*a) for a in holdout])


def test_min_k_drops_the_eos():
    got = METRICS.get("mia_min_k")(token_table(FORGET, HOLDOUT))
    assert got == pytest.approx(ou_auc(lambda lp, *_: ou_min_k(lp), FORGET, HOLDOUT))
    # by hand: scores -mean of the 2, 1, 1 | 1, 2 lowest: forget 1.25, 3.0, 0.05; holdout 2.5, 2.0
    # -> forget members beat holdout in (1.25 < 2.5, 1.25 < 2.0, 0.05 < both) = 4 of 6 pairs
    assert got == pytest.approx(4 / 6)


def test_min_k_plus_plus_drops_the_eos_and_clamps_the_variance():
    got = METRICS.get("mia_min_k_plus_plus")(token_table(FORGET, HOLDOUT))
    assert got == pytest.approx(ou_auc(lambda lp, _, mu, sd: ou_min_k_plus_plus(lp, mu, sd), FORGET, HOLDOUT))
    # a forget token with sigma 0 scores (-0.901 + 0.9) / sqrt(1e-6) = -1 (a floor of 1e-6 on sigma
    # would give -1000), above the holdout token's (-1.4 + 0.9) / 0.1 = -5: the forget answer wins
    one = token_table([([-0.901], [T], [-0.9], [0.0])], [([-1.4], [T], [-0.9], [0.1])])
    assert METRICS.get("mia_min_k_plus_plus")(one) == 1.0


def test_exact_memorization_drops_the_eos():
    # EM = mean match over the tokens without the eos: 4/5, 1/3, 1 -> (0.8 + 1/3 + 1) / 3
    assert METRICS.get("exact_memorization")(token_table(FORGET, HOLDOUT)) == pytest.approx((0.8 + 1 / 3 + 1) / 3)


def ou_extraction_strength(match):
    """memorization.extraction_strength, its loop written out."""
    n = len(match)
    for k in range(n):
        if all(match[k:]):
            break
    return 1 - k / n


def test_extraction_strength_follows_open_unlearnings_loop():
    # per answer: (T F T T T) -> k = 2, 3/5; (F T F) -> no suffix, k = n - 1 = 2 -> 1/3 (a wrong last
    # token scores 1/n, not 0); (T T T T) -> k = 0 -> 1
    expected = np.mean([ou_extraction_strength(m) for _, m, _, _ in FORGET])
    assert expected == pytest.approx((3 / 5 + 1 / 3 + 1) / 3)
    assert METRICS.get("extraction_strength")(token_table(FORGET, HOLDOUT)) == pytest.approx(expected)


def test_privleak_is_muses_relative_auc_difference_with_min_k():
    model, oracle = token_table(FORGET, HOLDOUT), token_table(HOLDOUT, FORGET)
    auc_model = ou_auc(lambda lp, *_: ou_min_k(lp), FORGET, HOLDOUT)
    auc_oracle = ou_auc(lambda lp, *_: ou_min_k(lp), HOLDOUT, FORGET)
    # privacy.privleak: score = 1 - auc, ref = 1 - auc_retain, (score - ref) / (ref + 1e-10) * 100
    expected = ((1 - auc_model) - (1 - auc_oracle)) / (1 - auc_oracle + 1e-10) * 100
    assert METRICS.get("privleak")(model, oracle) == pytest.approx(expected, rel=1e-8)


# ----------------------------------------------------------------------------- sequence-level attacks

SEQ = {"forget": [(0.4, 30, 0.9, 0.05), (1.25, 25, 1.0, 0.08), (0.8, 40, 1.5, 0.02)],
       "holdout": [(1.0, 28, 1.1, 0.07), (1.75, 35, 1.5, 0.04)]}  # (answer_nll, zlib bytes, oracle nll, grad norm)


def seq_tables():
    model = pd.DataFrame([{"split": s, "id": f"{s}{i}", "answer_nll": n, "answer_zlib": z, "grad_norm": g}
                          for s, rows in SEQ.items() for i, (n, z, _, g) in enumerate(rows)])
    oracle = pd.DataFrame([{"split": s, "id": f"{s}{i}", "answer_nll": o}
                           for s, rows in SEQ.items() for i, (_, _, o, _) in enumerate(rows)])
    return model, oracle


def test_loss_zlib_gradnorm_and_reference_attacks():
    model, oracle = seq_tables()
    f, h = SEQ["forget"], SEQ["holdout"]
    # LOSSAttack: score = avg loss; ZLIBAttack: loss / zlib length; GradNormAttack: the mean
    # parameter-gradient norm; ReferenceAttack: target loss - reference loss (reference = a retain
    # model, here the oracle); all "higher = non-member", so AUC of the negated score, forget positive
    assert METRICS.get("mia_loss")(model) == pytest.approx(auc([-r[0] for r in f], [-r[0] for r in h]))
    assert METRICS.get("mia_zlib")(model) == pytest.approx(auc([-r[0] / r[1] for r in f], [-r[0] / r[1] for r in h]))
    assert METRICS.get("mia_gradnorm")(model) == pytest.approx(auc([-r[3] for r in f], [-r[3] for r in h]))
    assert METRICS.get("mia_reference")(model, oracle) == pytest.approx(
        auc([-(r[0] - r[2]) for r in f], [-(r[0] - r[2]) for r in h]))
    # by hand: reference scores forget 0.5, -0.25, 0.7; holdout 0.1, -0.25 -> 4 wins + 1 tie of 6 = 4.5/6
    assert METRICS.get("mia_reference")(model, oracle) == pytest.approx(4.5 / 6)


# ----------------------------------------------------------------------------- MUSE

def test_knowmem_and_verbmem_are_mean_rouge_l_f1():
    t = pd.DataFrame([{"split": "forget", "rouge_l_f1": 0.2, "verbmem_rouge_l_f1": 0.6},
                      {"split": "forget", "rouge_l_f1": 0.6, "verbmem_rouge_l_f1": 1.0},
                      {"split": "retain", "rouge_l_f1": 0.9, "verbmem_rouge_l_f1": math.nan}])
    assert compute_metrics(["knowmem", "verbmem"], t) == pytest.approx(
        {"forget_knowmem": 0.4, "retain_knowmem": 0.9, "forget_verbmem": 0.8})


# ----------------------------------------------------------------------------- the per-sample columns
# On a tiny random Llama: forgetlab.eval.scoring's columns against open-unlearning's per-sample
# computations (evaluate_probability, tokenwise_vocab_logprobs, GradNormAttack), re-implemented
# here with plain torch, one unpadded sequence at a time.


def ou_sequence(model, tok, question, answer):
    """(avg_loss over all labelled tokens, argmax matches and target log-probs of the labelled
    tokens but the last) for one QA pair, as open-unlearning computes them."""
    enc = encode_qa(tok, question, answer)
    ids, labels = torch.tensor([enc["input_ids"]]), torch.tensor([enc["labels"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    losses = torch.nn.CrossEntropyLoss(ignore_index=-100, reduction="none")(logits[0, :-1], labels[0, 1:])
    avg_loss = float(losses.sum() / (labels != -100).sum())
    actual = (labels[0] != -100).nonzero()[:, 0][:-1]  # "-1 to ignore eos prediction"
    log_probs = torch.log_softmax(logits[0], -1)[actual[0] - 1:actual[-1]]
    targets = labels[0, actual]
    match = (log_probs.argmax(-1) == targets).tolist()
    return avg_loss, match, log_probs.gather(-1, targets[:, None])[:, 0].tolist()


@pytest.mark.parametrize("split", ["forget", "world_facts"])
def test_per_sample_columns_follow_open_unlearning(model, tok, split):
    got = score_split(model, tok, ROWS, split, batch_size=3, generate=False)
    for i, row in enumerate(ROWS):
        answer, match, logp = ou_sequence(model, tok, row["question"], row["answer"])
        para = ou_sequence(model, tok, row["question"], row["paraphrased_answer"])[0]
        wrong = [ou_sequence(model, tok, row["question"], p)[0] for p in row["perturbed_answer"]]
        correct = answer if split == "world_facts" else para
        assert got.loc[i, "prob"] == pytest.approx(math.exp(-answer), rel=1e-5)
        assert got.loc[i, "truth_ratio"] == pytest.approx(ou_truth_ratio(correct, wrong), rel=1e-4)
        assert got.loc[i, "option_prob"] == pytest.approx(ou_prob_w_options(answer, wrong), rel=1e-4)
        table = pd.DataFrame([{"split": "forget", "answer_token_match": got.loc[i, "answer_token_match"]}])
        assert METRICS.get("exact_memorization")(table) == pytest.approx(np.mean(match))
        assert METRICS.get("extraction_strength")(table) == pytest.approx(ou_extraction_strength(match))
        assert list(got.loc[i, "answer_token_logp"])[:-1] == pytest.approx(logp, abs=1e-5)


def test_grad_norm_column_follows_open_unlearnings_gradnorm_attack(model, tok):
    got = score_split(model, tok, ROWS, "holdout", batch_size=4, generate=False, grad_norm=True)
    model.train()  # GradNormAttack.compute_batch_values
    try:
        for i, row in enumerate(ROWS):
            enc = encode_qa(tok, row["question"], row["answer"])
            ids, labels = torch.tensor([enc["input_ids"]]), torch.tensor(enc["labels"])
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0], -1)[:-1]
            target_lp = log_probs.gather(-1, ids[0, 1:, None])[:, 0]
            actual = (labels != -100).nonzero()[:, 0][:-1]
            loss = -torch.mean(target_lp[actual[0] - 1:actual[-1]])
            model.zero_grad()
            loss.backward()
            expected = torch.stack([p.grad.norm(p=2) for p in model.parameters() if p.grad is not None]).mean()
            assert got.loc[i, "grad_norm"] == pytest.approx(float(expected), rel=1e-4)
    finally:
        model.zero_grad()
        model.eval()
