"""The evaluation: score a model per sample, join the other models' tables, and decide what to run.

* `scoring`: the per-sample table (COLUMNS) of one model, from the batched passes of `passes`;
* `forms`: the probe forms of the forget facts (form robustness);
* `relearn`: the relearning attack (relearn_recovery's columns);
* `tables`: the oracle's and the target's tables, read and joined to the model's rows;
* `plan`: which configured metrics a model can have, and which passes they need (from each
  metric's declared contract, `forgetlab.metrics.uses`);
* `trajectory`: the cheap metrics recorded during unlearning.

The aggregate metrics are `forgetlab.metrics`; the stage that ties all this together is
`forgetlab.recipes.evaluate`. Nothing is imported here, so that importing one part (the unlearn
stage imports `trajectory`) does not pull in the others.
"""
