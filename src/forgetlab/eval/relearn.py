"""The relearning attack: how much forgotten knowledge a little fine-tuning brings back.

Unlearning that only hides knowledge is undone by a few steps of fine-tuning on part of the
forget set, and the knowledge then comes back on the rest of it too: Hu, Fu, Wu and Smith 2025,
"Jogging the Memory of Unlearned LLMs Through Targeted Relearning Attacks" (ICLR); Deeb and
Roger 2024, "Do Unlearning Methods Remove Information from Language Model Weights?" (retraining
on some facts, measuring the others from the same distribution). Here:

1. ``split_forget``: the forget split's rows are divided once, deterministically (seeded by the
   data seed, so every model of a study gets the same division), into a relearn subset (a
   ``fraction`` of the rows, at least 1) and the held-out rest (at least 1 row);
2. ``relearn``: a copy of the model is fine-tuned with the shared loop (``forgetlab.train.train``:
   AdamW, gradient clipping at 1.0, a constant lr, no weight decay) on plain answer-only NLL of
   the subset's QA (batches from a seeded ``forgetlab.train.Loader``) for ``steps`` steps;
3. the relearned copy is scored on the held-out rows only, with the pieces of
   ``forgetlab.eval.scoring``: ``relearn_prob`` = P(a|q)^(1/|a|) (as ``prob``) and
   ``relearn_rouge_l_recall``, the ROUGE-L recall of its batched greedy answer (as
   ``rouge_l_recall``).

The evaluated model itself is left untouched. The per-sample columns (``relearn_columns``) go
into the model's samples.parquet; the metric ``relearn_recovery`` (forgetlab.metrics) compares
them with the oracle's and the target's.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass
from functools import partial

import pandas as pd

from forgetlab.eval.passes import timed
from forgetlab.eval.scoring import greedy_answers, pad_id, rouge_l_recall, sequence_nll
from forgetlab.losses import lm_loss
from forgetlab.metrics import EvalInputError
from forgetlab.model import autocast
from forgetlab.qa import encode_qa
from forgetlab.train import Loader, TrainConfig, seed_everything, train

COLUMNS = ["split", "id", "relearn_subset", "relearn_prob", "relearn_rouge_l_recall"]


@dataclass(frozen=True)
class RelearnConfig:
    """evaluate.relearn of the study config (the defaults: the default study's values)."""

    steps: int = 10
    lr: float = 1.0e-4
    batch_size: int = 8
    fraction: float = 0.25

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"evaluate.relearn: steps and batch_size must be >= 1, "
                             f"got {self.steps} and {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"evaluate.relearn.lr must be > 0, got {self.lr}")
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"evaluate.relearn.fraction must be in (0, 1), got {self.fraction}")


def split_forget(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(relearn subset, held-out rest) of the forget rows, in file order: round(fraction * n)
    rows, at least 1 and at most n - 1, drawn with random.Random(seed)."""
    n = len(rows)
    if n < 2:
        raise EvalInputError(f"relearning needs at least 2 forget rows (a subset to relearn on and a rest "
                             f"to score), the forget split has {n}")
    k = min(n - 1, max(1, round(fraction * n)))
    chosen = set(random.Random(seed).sample(range(n), k))
    return [r for i, r in enumerate(rows) if i in chosen], [r for i, r in enumerate(rows) if i not in chosen]


def relearn(model, tokenizer, subset: list[dict], cfg: RelearnConfig, seed: int, precision: str = "auto",
            max_length: int = 128):
    """A copy of ``model`` fine-tuned on ``subset``'s QA (answer-only NLL) for ``cfg.steps`` steps."""
    dev = next(model.parameters()).device
    relearned = copy.deepcopy(model)
    seed_everything(seed)
    examples = [encode_qa(tokenizer, r["question"], r["answer"], max_length) for r in subset]
    loader = Loader(examples, cfg.batch_size, pad_id(tokenizer), seed, dev)
    train_cfg = TrainConfig(epochs=1, batch_size=cfg.batch_size, lr=cfg.lr, max_steps=cfg.steps,
                            warmup_ratio=0.0, min_lr_ratio=1.0, weight_decay=0.0, max_grad_norm=1.0,
                            max_length=max_length)
    return train(relearned, partial(lm_loss, regularizers=()), iter(loader), cfg.steps, train_cfg,
                 desc="relearn", precision=precision)


def relearn_columns(model, tokenizer, forget_rows: list[dict], cfg: RelearnConfig, seed: int,
                    precision: str = "auto", batch_size: int = 32, max_new_tokens: int = 40,
                    timings: dict | None = None) -> pd.DataFrame:
    """One row per forget QA: ``relearn_subset`` (trained on), and on the held-out rows the relearned
    copy's ``relearn_prob`` and ``relearn_rouge_l_recall`` (NaN on the subset rows).
    ``timings["relearn"]`` gets the wall time (fine-tuning and scoring)."""
    with timed(timings, "relearn"):
        subset, rest = split_forget(forget_rows, cfg.fraction, seed)
        relearned = relearn(model, tokenizer, subset, cfg, seed, precision)
        with autocast(precision, next(relearned.parameters()).device):
            nlls = sequence_nll(relearned, tokenizer, [(r["question"], r["answer"]) for r in rest], batch_size)
            answers = greedy_answers(relearned, tokenizer, [r["question"] for r in rest], batch_size, max_new_tokens)
    after = {id(r): (math.exp(-nll), rouge_l_recall(gen, r["answer"])) for r, (nll, _), gen in zip(rest, nlls, answers)}
    records = []
    for r in forget_rows:
        prob, rouge = after.get(id(r), (math.nan, math.nan))
        records.append({"split": "forget", "id": r.get("id"), "relearn_subset": id(r) not in after,
                        "relearn_prob": prob, "relearn_rouge_l_recall": rouge})
    return pd.DataFrame.from_records(records, columns=COLUMNS)


def attach_relearn(samples: pd.DataFrame, columns: pd.DataFrame) -> pd.DataFrame:
    """Add the relearn columns to a per-sample table (False / NaN off the forget split)."""
    if columns.duplicated(["split", "id"]).any():
        raise EvalInputError("relearning: duplicate forget ids; the relearn subset needs unique ids")
    out = samples.merge(columns, on=["split", "id"], how="left")
    out["relearn_subset"] = out["relearn_subset"].astype("boolean").fillna(False).astype(bool)
    return out
