"""Shared pieces of the membership-inference (MIA) metrics: per-sample attack scores and the AUC.

Every attack gives each QA answer a score that is higher for a likelier training member. The
metric is the area under the ROC curve of the scores, members = the forget split (trained on by
the target), non-members = the holdout split (never trained on), computed by scikit-learn's
``roc_auc_score``: the probability that a random forget answer scores above a random holdout
answer (ties count 1/2). 1: forget answers fully recognisable; 0.5: indistinguishable from
holdout, as for a model never trained on them. This is the convention of open-unlearning's
``mia_*`` metrics (Dorna et al. 2025, "OpenUnlearning"); MUSE reports 1 - AUC (see privleak).

Statistics of whole answers (LOSS, zlib, reference: ``answer_nll``) are over the tokens of
" " + answer + eos given the question prompt, as open-unlearning's ``evaluate_probability``;
token-level attacks (Min-K%, Min-K%++; GradNorm in `forgetlab.eval.passes`) drop the eos, as its
``tokenwise_logprobs`` does (see `forgetlab.metrics.answer_tokens`). open-unlearning's scores are
signed "higher = less likely a member" and its labels are forget 0 / holdout 1; the scores here are
negated and the labels swapped, which gives the same AUC.
"""

from __future__ import annotations

import numpy as np

from forgetlab.metrics import EvalInputError, answer_tokens, split_rows

MEMBERS, NON_MEMBERS = "forget", "holdout"
DEFAULT_K = 0.4        # Min-K% and Min-K%++ fraction, as in open-unlearning's TOFU/MUSE configs
VARIANCE_FLOOR = 1e-6  # Min-K%++: open-unlearning clamps sigma^2 at 1e-6 (sigma at 1e-3), keeping a
                       # one-hot prediction (sigma = 0) finite


def k_lowest_mean(values, k: float) -> float:
    """Mean of the max(1, floor(k * n)) smallest of the n values (Min-K%'s selection)."""
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    values = np.sort(np.asarray(values, dtype=float))
    if len(values) == 0:
        raise EvalInputError("Min-K%: an answer without tokens")
    return float(values[:max(1, int(len(values) * k))].mean())


def loss_score(rows) -> np.ndarray:
    return -rows["answer_nll"].to_numpy(float)


def zlib_score(rows) -> np.ndarray:
    return -rows["answer_nll"].to_numpy(float) / rows["answer_zlib"].to_numpy(float)


def min_k_score(rows, k: float = DEFAULT_K, eos: bool = False, metric: str = "mia_min_k") -> np.ndarray:
    return np.array([k_lowest_mean(answer_tokens(lp, metric, eos), k) for lp in rows["answer_token_logp"]])


def min_k_plus_plus_tokens(logp, mu, sigma) -> np.ndarray:
    """Min-K%++ token scores (log p(y_t|<t) - mu_t) / sqrt(max(sigma_t^2, VARIANCE_FLOOR))."""
    sigma = np.sqrt(np.maximum(np.square(np.asarray(sigma, dtype=float)), VARIANCE_FLOOR))
    return (np.asarray(logp, dtype=float) - np.asarray(mu, dtype=float)) / sigma


def min_k_plus_plus_score(rows, k: float = DEFAULT_K, eos: bool = False,
                          metric: str = "mia_min_k_plus_plus") -> np.ndarray:
    return np.array([k_lowest_mean(min_k_plus_plus_tokens(*(answer_tokens(v, metric, eos) for v in (lp, mu, sd))), k)
                     for lp, mu, sd in zip(rows["answer_token_logp"], rows["answer_token_mu"],
                                           rows["answer_token_sigma"])])


def gradnorm_score(rows) -> np.ndarray:
    return -rows["grad_norm"].to_numpy(float)


def reference_score(rows) -> np.ndarray:
    return -(rows["answer_nll"].to_numpy(float) - rows["reference_answer_nll"].to_numpy(float))


def mia_auc(samples, attack, metric: str, columns: tuple[str, ...], table: str = "model",
            splits: tuple[str, str] = (MEMBERS, NON_MEMBERS)) -> float:
    """AUC of ``attack``'s scores, members (positive; the forget split) against non-members (the
    holdout), on ``samples``; ``splits`` names the two splits."""
    scores = []
    for split in splits:
        rows = split_rows(samples, split, metric, columns, table)
        s = np.asarray(attack(rows), dtype=float)
        if not np.isfinite(s).all():
            raise EvalInputError(f"metric {metric!r}: {int((~np.isfinite(s)).sum())} {split} rows of the {table}'s "
                                 f"table have no finite {'/'.join(columns)}")
        scores.append(s)
    labels = np.r_[np.ones(len(scores[0])), np.zeros(len(scores[1]))]
    from sklearn.metrics import roc_auc_score  # here, not at the top: unlearn jobs import this package too

    return float(roc_auc_score(labels, np.concatenate(scores)))
