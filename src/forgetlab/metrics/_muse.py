"""Where the MUSE metrics (knowmem, verbmem, privleak) find their rows: a muse study's table
(forgetlab.eval.muse) names each MUSE set's rows `<metric>_<split>` (knowmem_forget,
verbmem_forget, privleak_holdout, ...), the synthetic world's table the plain split."""

from __future__ import annotations

MUSE_SPLITS = ("knowmem_forget", "knowmem_retain", "verbmem_forget", "privleak_forget", "privleak_holdout")


def is_muse_table(samples) -> bool:
    """Whether a per-sample table is a muse study's (it has rows of a MUSE set)."""
    return samples is not None and len(samples) > 0 and bool(set(samples["split"]) & set(MUSE_SPLITS))


def split_of(samples, metric: str, split: str) -> str:
    """The split name of `split`'s rows for `metric` in this table."""
    return f"{metric}_{split}" if is_muse_table(samples) else split
