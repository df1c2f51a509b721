"""zlib membership-inference attack (Carlini et al. 2021, "Extracting Training Data from Large
Language Models", §5.1 "zlib"), as open-unlearning's ``mia_zlib``.

    score(x) = -NLL(x) / zlib(x)    NLL = mean per-token answer NLL,
                                    zlib(x) = len(zlib.compress(answer as UTF-8)) in bytes
    mia_zlib = AUC(score; forget = members, holdout = non-members)      (see _mia)

The zlib length calibrates the loss by the text's own compressibility (a generic, repetitive
answer has a low loss without being memorised).
Hand-worked: forget (NLL, zlib) = (2, 10), (6, 20) and holdout (3, 10), (1, 40) give scores
-0.2, -0.3 vs -0.3, -0.025: pairs forget > holdout: (-0.2 > -0.3), tie (-0.3 = -0.3) counts 1/2,
so AUC = (1 + 0.5) / 4 = 0.375.
"""

from __future__ import annotations

from forgetlab.metrics import METRICS, uses
from forgetlab.metrics._mia import mia_auc, zlib_score


@METRICS.register("mia_zlib")
@uses(columns=("answer_nll", "answer_zlib"))
def mia_zlib(samples, oracle=None, role="model") -> float:
    return mia_auc(samples, zlib_score, "mia_zlib", ("answer_nll", "answer_zlib"))
