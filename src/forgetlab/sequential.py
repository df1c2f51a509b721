"""Sequential unlearning (MUSE's "sustainability"): the forget split is cut into k chunks that
are unlearned one after another, and every intermediate model is evaluated.

Step j (1..k) starts from step j-1's model (step 0 is the target) and runs the method's usual
unlearning with chunk j as its forget set; the retain set is the split's whole retain set. Each
step is evaluated like any unlearned model: on the whole forget split, against the oracle.

* Chunks are made of whole authors (`entity_id`), so no author is split across two steps. The
  split's authors are shuffled with the data seed (`data.seed`), so every regularizer, seed and
  method of a study unlearns the same chunks in the same order, and cut into k contiguous runs
  whose sizes differ by at most one author.
* The reference model of methods that have one (npo, simnpo, ...) is the target, the model before
  any unlearning, at every step, as in MUSE's sequential setting: each step is penalised for how
  far it has moved from the original model, not from the previous step.
"""

from __future__ import annotations

import random


def author_chunks(rows: list[dict], chunks: int, seed: int) -> list[list[str]]:
    """The authors (entity ids) of each chunk: a seeded shuffle of the split's authors, cut into
    `chunks` contiguous runs whose sizes differ by at most one (the larger runs first)."""
    authors = sorted({r["entity_id"] for r in rows})
    if chunks < 1:
        raise ValueError(f"sequential: chunks must be at least 1, got {chunks}")
    if chunks > len(authors):
        raise ValueError(f"sequential: {chunks} chunks but the forget split has only {len(authors)} author(s)")
    random.Random(f"sequential-{seed}").shuffle(authors)
    size, extra = divmod(len(authors), chunks)
    bounds = [j * size + min(j, extra) for j in range(chunks + 1)]
    return [authors[bounds[j]:bounds[j + 1]] for j in range(chunks)]


def forget_chunk(rows: list[dict], step: int, chunks: int, seed: int) -> list[dict]:
    """The forget rows that step `step` (1..chunks) unlearns, in their order in the split."""
    if not 1 <= step <= chunks:
        raise ValueError(f"sequential: step {step} is not in 1..{chunks}")
    authors = set(author_chunks(rows, chunks, seed)[step - 1])
    return [r for r in rows if r["entity_id"] in authors]
