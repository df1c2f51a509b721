"""TOFU's forget splits and their retain complements: the names a config may use, with no heavy
imports, so that checking a config and planning the DAG never load torch."""

from __future__ import annotations

FORGET_SPLITS = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}
RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}


def forget_size(pct: float, n_authors: int) -> int:
    """The number of forget authors of a split: pct of the authors, at least one."""
    return max(1, round(pct * n_authors))


# MUSE (data.source: muse): one forget set and its retain set (forgetlab.data.muse)
MUSE_RETAIN_OF = {"forget": "retain"}


def retain_of(split: str) -> str:
    """The retain complement of a forget split: TOFU's retainXX, or MUSE's retain."""
    return RETAIN_OF[split] if split in RETAIN_OF else MUSE_RETAIN_OF[split]
