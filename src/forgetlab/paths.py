"""Training paths: fine-tuning as an ordered sequence of named stages (the study's `stages:` and
`paths:` sections), and where each stage's model lives.

A **stage** is a data mix and its training settings: `data: authors` (the author QA: retain +
forget for the target, the split's retain rows for the oracle) or `data: world` (the
`world_train` QA split: facts of pretraining-corpus people, disjoint from the evaluation rows),
with optional `train:` overrides of the study's `finetune:` settings. A **path** is an ordering
of stages; every path contains an `authors` stage (the one with the forget rows), or its oracle
would be its target. No `paths:` section: the single fine-tune of today, and none of this applies.

Each stage of a path is one fine-tuning job that starts from the previous stage's model (the
first from the pretrained model). Its model is at

    finetune/<regularizer>/seed<k>/stages/<s1>/<s2>/.../<sj>/target           (every stage on its full mix)
    finetune/<regularizer>/seed<k>/stages/<s1>/.../<sj>/<split>/oracle        (forget rows removed)

so paths that share a prefix share its jobs, and an oracle shares the target's jobs up to its
first authors stage (before it, no stage has forget rows to remove). No torch, no config
imports: the workflow plans with this module, and forgetlab.config checks with it.
"""

from __future__ import annotations

import re

from forgetlab.splits import FORGET_SPLITS

STAGE_DATA = {"authors": "the author QA (full for the target, the split's retain rows for the oracle)",
              "world": "the world_train QA split (general knowledge, disjoint from world_facts and real_authors)"}
WORLD_SPLIT = "world_train"
ROOT = "stages"  # the directory under finetune/<regularizer>/seed<k>/ that holds the stage models
# names a stage or a path may not take: they are directory names of the layout
RESERVED = ("target", "oracle", "sequential", "pretrained", "unlearned", ROOT, *FORGET_SPLITS)
_INGREDIENT = re.compile(r"ingredient\d+")


class PathError(ValueError):
    """A bad `stages:` / `paths:` section; the message starts with the key (forgetlab.config adds
    `config key`)."""


def study_paths(config: dict) -> dict[str, list[str]]:
    """path name -> its stage names in order; {} without a `paths:` section."""
    return {name: list(stages) for name, stages in (config.get("paths") or {}).items()}


def entry_paths(config: dict, entry: str) -> list[str]:
    """The paths a regularizer entry runs on: its `paths` option (a mapping entry's), else every
    path of the study ([] without a `paths:` section). A control that need not run everywhere,
    e.g. the A/A entry on one path, costs a path's fine-tunes less."""
    value = config["regularizers"][entry]
    chosen = value.get("paths") if isinstance(value, dict) else None
    return list(chosen) if chosen is not None else list(study_paths(config))


def authors_stages(config: dict) -> set[str]:
    """The stages with the author QA (the forget rows)."""
    return {name for name, stage in (config.get("stages") or {}).items() if stage["data"] == "authors"}


def check_paths(config: dict) -> None:
    """The semantic checks the schema cannot do: names, stage references, an authors stage in
    every path, no two paths with the same order, and no soup entry (not supported with paths)."""
    stages, paths = config.get("stages") or {}, study_paths(config)
    if stages and not paths:
        raise PathError("stages: no `paths:` section orders them; add one (e.g. paths: {p: [authors]})")
    for kind, names in (("stages", stages), ("paths", paths)):
        for name in names:
            if name in RESERVED or _INGREDIENT.fullmatch(name):
                raise PathError(f"{kind}.{name}: {name!r} is a directory name of the layout; rename it")
    authors = authors_stages(config)
    seen = {}
    for name, order in paths.items():
        for i, stage in enumerate(order):
            if stage not in stages:
                raise PathError(f"paths.{name}[{i}]: unknown stage {stage!r}; known: {', '.join(stages)}")
        if not authors & set(order):
            raise PathError(f"paths.{name}: no stage with `data: authors` (one of: {', '.join(sorted(authors)) or 'none defined'}); "
                            "every path needs the stage with the forget rows, or its oracle would be its target")
        if tuple(order) in seen:
            raise PathError(f"paths.{name}: the same stages in the same order as paths.{seen[tuple(order)]}")
        seen[tuple(order)] = name
    for entry, value in config["regularizers"].items():
        chosen = value.get("paths") if isinstance(value, dict) else None
        if chosen is None:
            continue
        if not paths:
            raise PathError(f"regularizers.{entry}.paths: the study has no `paths:` section to choose from")
        for i, name in enumerate(chosen):
            if name not in paths:
                raise PathError(f"regularizers.{entry}.paths[{i}]: unknown path {name!r}; known: {', '.join(paths)}")
        if len(set(chosen)) < len(chosen):
            raise PathError(f"regularizers.{entry}.paths: a path named twice")
    if paths:
        for entry, value in config["regularizers"].items():
            if isinstance(value, dict) and value.get("soup") is not None:
                raise PathError(f"regularizers.{entry}.soup: soups are not supported with `paths:` yet")


def has_oracle(prefix: list[str], authors: set[str]) -> bool:
    """Whether the model after `prefix` differs between target and oracle (an authors stage ran)."""
    return bool(authors & set(prefix))


def stage_model(prefix: list[str], role: str, split: str | None, authors: set[str]) -> str:
    """The model after the stages `prefix`, relative to finetune/<regularizer>/seed<k>/: the
    target's, or the split's oracle's (the target's while no authors stage has run yet)."""
    base = "/".join([ROOT, *prefix])
    if role == "oracle" and has_oracle(prefix, authors):
        return f"{base}/{split}/oracle"
    return f"{base}/target"


def path_model(config: dict, path: str, role: str, split: str | None = None) -> str:
    """The target (or the split's oracle) of a path: the model after its last stage."""
    return stage_model(study_paths(config)[path], role, split, authors_stages(config))


def parse_stage_model(tuned: str) -> tuple[list[str], str, str | None]:
    """`stages/a/b/target` -> (["a", "b"], "target", None); `stages/a/b/forget10/oracle` ->
    (["a", "b"], "oracle", "forget10")."""
    parts = tuned.split("/")
    if parts[0] != ROOT or len(parts) < 3:
        raise ValueError(f"{tuned!r} is not a stage model ({ROOT}/<stage>/.../target or .../<split>/oracle)")
    if parts[-1] == "oracle":
        return parts[1:-2], "oracle", parts[-2]
    return parts[1:-1], "target", None


def previous_model(tuned: str, authors: set[str]) -> str | None:
    """The model a stage job starts from (relative, like `tuned`), or None for the pretrained model."""
    prefix, role, split = parse_stage_model(tuned)
    return stage_model(prefix[:-1], role, split, authors) if len(prefix) > 1 else None


def stage_jobs(config: dict, splits: list[str]) -> list[str]:
    """Every stage model of the study's paths (relative, once each): each path's target chain and
    each split's oracle chain, shared prefixes counted once."""
    authors, jobs = authors_stages(config), {}
    for order in study_paths(config).values():
        for j in range(1, len(order) + 1):
            jobs[stage_model(order[:j], "target", None, authors)] = None
            for split in splits:
                jobs[stage_model(order[:j], "oracle", split, authors)] = None
    return list(jobs)


def stage_params(config: dict, stages: str, role: str, retain_split: str | None) -> dict:
    """The part of a stage job's parameters that the stage decides: its name, data and training
    split, and the study's finetune settings with the stage's `train:` overrides."""
    prefix = stages.split(",")
    stage = config["stages"][prefix[-1]]
    if role == "oracle" and not has_oracle(prefix, authors_stages(config)):
        raise PathError(f"--at stages={stages}: no authors stage has run yet, so the oracle is the target (role=target)")
    split = WORLD_SPLIT if stage["data"] == "world" else ("full" if role == "target" else retain_split)
    return {"train_stage": prefix[-1], "stage_data": stage["data"], "training_split": split,
            "train": {**config["finetune"], **(stage.get("train") or {})}}


def check_stage_prefix(config: dict, stages: str) -> None:
    """`--at stages=a,b`: a prefix of one of the study's paths."""
    prefix = stages.split(",")
    if not any(order[:len(prefix)] == prefix for order in study_paths(config).values()):
        known = ", ".join(",".join(order) for order in study_paths(config).values()) or "no paths"
        raise PathError(f"--at stages={stages}: not a prefix of any of the study's paths ({known})")
