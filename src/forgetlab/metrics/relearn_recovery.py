"""Relearning attack: the fraction of the target-vs-oracle gap that a little fine-tuning on part
of the forget set brings back on the rest of it (Hu et al. 2025, "Jogging the Memory of Unlearned
LLMs Through Targeted Relearning Attacks"; Deeb and Roger 2024, "Do Unlearning Methods Remove
Information from Language Model Weights?"). The attack itself is `forgetlab.eval.relearn`.

The forget rows are split once, with random.Random(data seed), into a relearn subset
(round(fraction * n) rows, at least 1, at most n - 1) and the held-out rest R (column
``relearn_subset``). Each model (the target, the oracle and every unlearned model) is relearned
the same way: a copy is fine-tuned with the shared loop (AdamW, constant lr, gradient clipping
at 1, no weight decay) on answer-only NLL of the subset's QA for evaluate.relearn.steps steps of
evaluate.relearn.batch_size (seeded batches), then scored on R: ``relearn_prob`` (P(a|q)^(1/|a|),
as ``prob``) and ``relearn_rouge_l_recall`` (of its batched greedy answer, as ``rouge_l_recall``).
The oracle never saw R, so what it gains there is generic (the answer format), not recovered
knowledge; it is the baseline:

    relearn_recovery       = (mean_R relearn_prob(model) - mean_R relearn_prob(oracle))
                             / (mean_R prob(target) - mean_R prob(oracle))
    relearn_recovery_rouge = the same with ROUGE-L recall (relearn_rouge_l_recall, rouge_l_recall)

where prob and rouge_l_recall are the target's and the oracle's scores before relearning. 0
means the model relearns R no better than a model that never knew it, 1 means relearning brings
back all that the target knows about R: the unlearning hid the knowledge rather than removed it.
Also reported: ``relearn_forget_prob`` and ``relearn_forget_rouge``, the model's raw means over R
after relearning.

Needs the oracle's table and the target's scores (columns ``target_prob`` and
``target_rouge_l_recall``, which the evaluation attaches from the target's table). The oracle
(role "oracle") gets 0 by definition; the target is near 1, less whatever relearning on the
subset costs it on R (a sanity anchor). A
target-vs-oracle gap under MIN_GAP in absolute value makes the ratio meaningless and is an
error. Hand-worked: on R the oracle has relearn_prob 0.4, the target prob 0.9 and the oracle
prob 0.1; a model with relearn_prob 0.8 gets (0.8 - 0.4) / (0.9 - 0.1) = 0.5.
"""

from __future__ import annotations

import pandas as pd

from forgetlab.metrics import METRICS, EvalInputError, require_oracle, split_rows, uses

MIN_GAP = 1e-3  # on a [0, 1] scale: probabilities and ROUGE-L recall
RELEARNED = ("relearn_subset", "relearn_prob", "relearn_rouge_l_recall")
TARGET = ("target_prob", "target_rouge_l_recall")  # the target's prob and rouge_l_recall on the model's rows
# (result key, score after relearning, score before relearning)
PAIRS = (("relearn_recovery", "relearn_prob", "prob"),
         ("relearn_recovery_rouge", "relearn_rouge_l_recall", "rouge_l_recall"))


def held_out(table: pd.DataFrame, columns, table_name: str, metric: str) -> pd.DataFrame:
    """The forget rows outside the relearn subset, indexed by id; their values must all be present."""
    rows = split_rows(table, "forget", metric, (*RELEARNED, *columns), table_name)
    rest = rows[~rows["relearn_subset"].astype(bool)].set_index("id")
    if len(rest) == 0:
        raise EvalInputError(f"metric {metric!r}: the {table_name}'s table has no held-out forget rows "
                             "(every row is in the relearn subset)")
    for column in ("relearn_prob", "relearn_rouge_l_recall", *columns):
        if rest[column].isna().any():
            raise EvalInputError(f"metric {metric!r}: {column} is missing on {int(rest[column].isna().sum())} "
                                 f"held-out forget row(s) of the {table_name}'s table")
    return rest


@METRICS.register("relearn_recovery")
@uses(tables=("model", "oracle", "target"), columns=(*RELEARNED, "prob", "rouge_l_recall", *TARGET))
def relearn_recovery(samples, oracle=None, role="model") -> dict[str, float]:
    metric = "relearn_recovery"
    oracle = require_oracle(oracle, metric)
    if role == "oracle":  # the oracle is its own baseline: 0 by definition
        rest = held_out(samples, (), "model", metric)
        return {"relearn_recovery": 0.0, "relearn_recovery_rouge": 0.0,
                "relearn_forget_prob": float(rest["relearn_prob"].mean()),
                "relearn_forget_rouge": float(rest["relearn_rouge_l_recall"].mean())}
    if any(column not in samples for column in TARGET):
        raise EvalInputError(f"metric {metric!r} needs the target's per-sample table, its {' and '.join(TARGET)} "
                             "attached to the model's rows, and none was attached")
    rest = held_out(samples, TARGET, "model", metric)
    base = held_out(oracle, ("prob", "rouge_l_recall"), "oracle", metric)
    if set(rest.index) != set(base.index):
        raise EvalInputError(f"metric {metric!r}: the model's and the oracle's held-out forget rows differ "
                             f"({len(set(rest.index) ^ set(base.index))} ids): were both evaluated on the same "
                             "data with the same evaluate.relearn.fraction?")
    base = base.loc[rest.index]
    out = {}
    for key, after, before in PAIRS:
        gap = float(rest[f"target_{before}"].mean() - base[before].mean())
        if abs(gap) < MIN_GAP:
            raise EvalInputError(
                f"metric {metric!r}: {key} is undefined: the target's and the oracle's mean {before} on the "
                f"held-out forget rows differ by {gap:.2g} (under {MIN_GAP:g}), so there is no forget knowledge "
                "to recover; train the target longer, or leave relearn_recovery out of evaluate.metrics")
        out[key] = float(rest[after].mean() - base[after].mean()) / gap
    return {**out, "relearn_forget_prob": float(rest["relearn_prob"].mean()),
            "relearn_forget_rouge": float(rest["relearn_rouge_l_recall"].mean())}
