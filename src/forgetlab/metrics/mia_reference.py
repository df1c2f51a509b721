"""Reference-model membership-inference attack (Carlini et al. 2021, "Extracting Training Data
from Large Language Models", §5.1, comparing with another model; in the loss-difference form of
Watson et al. 2022, "On the Importance of Difficulty Calibration in Membership Inference Attacks",
as in MIMIR and open-unlearning's ``mia_reference``).

    score(x) = -(NLL_model(x) - NLL_ref(x))     NLL = mean per-token NLL of " " + answer + eos
    mia_reference = AUC(score; forget = members, holdout = non-members)     (see _mia)

The reference is the oracle, the model fine-tuned on the retain set only, as open-unlearning's
configs take a retain model (``reference_model_path``, e.g. tofu_..._retain90): it never saw the
forget or the holdout authors but knows the QA format and the world, so subtracting its loss
removes how hard each answer is in itself. Its NLLs are the oracle table's answer_nll, matched on
(split, id); the oracle scored against itself gets 0.5. (forgetlab used the pretrained model
before; there is no such variant now: it calibrates worse, knowing neither the format nor the
retain authors, and open-unlearning's numbers are taken against a retain model.)
Needs the oracle's table; an error if it is missing or lacks a forget/holdout row of the model's.
Hand-worked: forget (NLL, ref) = (1, 3), (2, 2) and holdout (2, 1), (3, 4) -> scores 2, 0 vs
-1, 1 -> AUC = 3/4.
"""

from __future__ import annotations

import pandas as pd

from forgetlab.metrics import METRICS, EvalInputError, require_oracle, split_rows, uses
from forgetlab.metrics._mia import MEMBERS, NON_MEMBERS, mia_auc, reference_score

METRIC = "mia_reference"


def with_reference_nll(samples, reference):
    """The model's forget and holdout rows with reference_answer_nll, the reference's answer_nll
    of the same (split, id)."""
    parts = []
    for split in (MEMBERS, NON_MEMBERS):
        rows = split_rows(samples, split, METRIC, ("id", "answer_nll"))
        ref = split_rows(reference, split, METRIC, ("id", "answer_nll"), table="oracle")
        if ref["id"].duplicated().any():
            raise EvalInputError(f"metric {METRIC!r}: the oracle's table has duplicate {split} ids")
        nll = rows["id"].map(ref.set_index("id")["answer_nll"])
        if nll.isna().any():
            raise EvalInputError(f"metric {METRIC!r}: the oracle's table lacks {int(nll.isna().sum())} {split} row(s) "
                                 f"of the model's, e.g. id {rows.loc[nll.isna(), 'id'].tolist()[0]!r}: were both "
                                 "evaluated on the same data?")
        parts.append(rows.assign(reference_answer_nll=nll.to_numpy(float)))
    return pd.concat(parts, ignore_index=True)


@METRICS.register("mia_reference")
@uses(tables=("model", "reference"), columns=("answer_nll",))
def mia_reference(samples, reference=None, role="model") -> float:
    reference = require_oracle(reference, METRIC)
    return mia_auc(with_reference_nll(samples, reference), reference_score, METRIC,
                   ("answer_nll", "reference_answer_nll"))
