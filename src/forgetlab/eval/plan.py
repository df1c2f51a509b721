"""What one evaluation runs, from the declared contracts of its configured metrics
(`forgetlab.metrics.uses`): which metrics the model can have, and which passes they need.

* ``metrics_to_run``: a metric reading the oracle's, the reference's or the target's table needs
  that input (tables.SOURCES). The pretrained model has none by design, so such metrics are left
  out for it (and logged); for any other model a missing input is an error naming it, raised
  before any scoring.
* ``passes_for``: the likelihood pass always runs; each optional pass (the scoring's PASS_COLUMNS
  and the relearning attack, RELEARN) runs only if a metric reads one of its columns. A target
  column (``target_prob``) reads the target's own column (``prob``): the target, evaluated with
  the same metrics, fills it with the same passes. So ``[mia_loss, forget_quality]`` runs the
  likelihood pass alone, and ``mia_gradnorm`` is what asks for GradNorm.
"""

from __future__ import annotations

import sys

from forgetlab.eval.relearn import COLUMNS as RELEARN_COLUMNS
from forgetlab.eval.scoring import PASS_COLUMNS
from forgetlab.eval.tables import INPUTS, OPTIONS, SOURCES, TARGET_COLUMNS
from forgetlab.metrics import KEYS, EvalInputError, uses_of

RELEARN = "relearn"
# every optional pass and the columns it fills
OPTIONAL_PASSES = {**PASS_COLUMNS, RELEARN: tuple(c for c in RELEARN_COLUMNS if c not in KEYS)}


def inputs_of(name: str) -> list[str]:
    """The inputs ("oracle", "target") that metric ``name`` needs besides the model's table."""
    return list(dict.fromkeys(SOURCES[t] for t in uses_of(name).tables if t in SOURCES))


def metrics_to_run(names: list[str], model: str, available: set[str]) -> list[str]:
    """The configured metrics this model can have, given the ``available`` inputs."""
    run, skipped = [], []
    for name in names:
        missing = [need for need in inputs_of(name) if need not in available]
        if not missing:
            run.append(name)
        elif model == "pretrained":
            skipped.append(name)
        else:
            raise EvalInputError(f"metric {name!r} needs {INPUTS[missing[0]]}, and no {OPTIONS[missing[0]]} was given")
    if skipped:
        print(f"evaluate: {', '.join(skipped)} not computed for the pretrained model "
              "(no oracle or target table by design)", file=sys.stderr)
    return run


def needs_target(names: list[str]) -> bool:
    """Whether a metric of ``names`` reads the target's columns (then they are attached)."""
    return any("target" in uses_of(name).tables for name in names)


def passes_for(names: list[str]) -> list[str]:
    """The optional passes (of OPTIONAL_PASSES, in its order) that the metrics ``names`` read."""
    own = {v: k for k, v in TARGET_COLUMNS.items()}
    read = {own.get(c, c) for name in names for c in uses_of(name).columns}
    return [p for p, columns in OPTIONAL_PASSES.items() if read & set(columns)]
