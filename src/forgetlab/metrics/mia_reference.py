"""Reference-model membership-inference attack (Carlini et al. 2021, "Extracting Training Data
from Large Language Models", §5.1, comparing with another model; in the loss-difference form of
Watson et al. 2022, "On the Importance of Difficulty Calibration in Membership Inference Attacks",
as in MIMIR and open-unlearning's ``mia_reference``).

    score(x) = -(NLL_model(x) - NLL_ref(x))     NLL = mean per-token answer NLL
    mia_reference = AUC(score; forget = members, holdout = non-members)     (see _mia)

The reference is the pretrained model, which never saw any author (open-unlearning uses the
retain model instead): subtracting its loss removes how hard each answer is in itself. Its NLLs
are the column reference_answer_nll, joined on (split, id) from the pretrained model's table by
the evaluate recipe (``--reference``), so the model's table alone recomputes the metric.
Hand-worked: forget (NLL, ref) = (1, 3), (2, 2) and holdout (2, 1), (3, 4) -> scores 2, 0 vs
-1, 1 -> AUC = 3/4.
"""

from __future__ import annotations

from forgetlab.metrics import METRICS, INPUTS, EvalInputError, needs
from forgetlab.metrics._mia import mia_auc, reference_score


@METRICS.register("mia_reference")
@needs("reference")
def mia_reference(samples, oracle=None) -> float:
    if "reference_answer_nll" not in samples:
        raise EvalInputError(f"metric 'mia_reference' needs {INPUTS['reference']}, and none was given")
    return mia_auc(samples, reference_score, "mia_reference", ("answer_nll", "reference_answer_nll"))
