"""Study configuration: loading, validation, and the resolved parameters of each stage.

A study config is checked in two layers before any job runs:
1. the JSON schema (`config.schema.yaml`, also at `workflow/schemas/`): structure, keys, types;
2. `check_config`: semantics, once: each component spec is built through its registry
   (forgetlab.registry.build), which checks its parameters and their ranges.
Every error names the offending key.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

from forgetlab import paths, strategies
from forgetlab.registry import ComponentError
from forgetlab.splits import FORGET_SPLITS, forget_size, retain_of

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")
RESERVED_MODELS = ("pretrained", "target", "oracle", "unlearned", "sequential")


class ConfigError(ValueError):
    """A study config that cannot run; the message names the key."""


def load_config(path: str | Path) -> dict:
    with open(path) as f:
        config = yaml.safe_load(f)
    validate_schema(config)
    check_config(config)
    return config


def non_finite_key(value: Any, key: str = "") -> str | None:
    """The dotted key of the first NaN or infinite number in a config, or None. JSON schema bounds
    do not catch these (NaN compares false with every bound), so they are rejected first."""
    if isinstance(value, float) and not math.isfinite(value):
        return key or "<top level>"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = non_finite_key(v, f"{key}[{k}]" if isinstance(k, int) else f"{key}.{k}" if key else str(k))
        if found:
            return found
    return None


def check_finite(config: dict) -> None:
    bad = non_finite_key(config)
    if bad:
        raise ConfigError(f"config key {bad}: numbers must be finite (got NaN or infinity)")


def check_or_exit(config: dict, stamps: str | Path = ".snakemake/forgetlab") -> None:
    """The Snakefile's check: the schema, then the registries; a bad config ends the run with one
    line naming the key (no traceback), before any job is planned.

    The registries import torch and build every component (seconds), so a config that passed
    both is stamped (`stamps/config-ok-<fingerprint>`) and not checked again until it, or any
    file of the package (the schema included), changes: planning a finished study stays fast."""
    try:
        stamp = Path(stamps) / f"config-ok-{fingerprint(config)}"
        if not stamp.exists():
            validate_schema(config)
            check_config(config)
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.touch()
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None


def fingerprint(config: dict) -> str:
    """A digest of the config, of every file of the forgetlab package (path, size, mtime), and of
    whether `model.init_from` (and `data.path`) exists: what check_config's verdict depends on."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    package = Path(__file__).parent
    for path in sorted(package.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".yaml", ".txt"):
            st = path.stat()
            digest.update(f"{path.relative_to(package)}:{st.st_size}:{st.st_mtime_ns};".encode())
    init_from = config.get("model", {}).get("init_from")
    digest.update(f"init_from:{bool(init_from) and Path(init_from).is_dir()}".encode())
    data_path = config.get("data", {}).get("path")
    if data_path:  # a tofu or muse source: whether its directory exists (forgetlab.data.muse.check_study)
        digest.update(f"data.path:{Path(data_path).is_dir()}".encode())
    return digest.hexdigest()[:20]


def validate_schema(config: dict) -> None:
    import jsonschema  # here, not at the top: a stamped config's planning does not need it

    check_finite(config)
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "<top level>"
        raise ConfigError(f"config key {key}: {error.message}")


def check_config(config: dict) -> None:
    """The semantic check: every component spec is built once (forgetlab.registry.build: names,
    parameter names and types, then each component's own range checks), with the errors keyed."""
    from forgetlab.metrics import METRICS
    from forgetlab.regularizers import build_regularizers
    from forgetlab.unlearning import build_method

    check_finite(config)  # Snakemake's own schema validation lets NaN through
    unlearn_settings = {"unlearn": config["unlearn"], **{f"methods.{e}.train": (m.get("train") or {})
                                                         for e, m in config["methods"].items()}}
    for key, settings in unlearn_settings.items():
        if settings.get("supervised_logits"):
            raise ConfigError(f"config key {key}.supervised_logits: the unlearning losses compute their own logits; "
                              "supervised_logits applies to pretrain and finetune")
    for entry in config["regularizers"]:
        _build(f"regularizers.{entry}", build_regularizers, entry_components(config, entry))
    for entry, spec in config["methods"].items():
        if entry in RESERVED_MODELS:
            raise ConfigError(f"config key methods.{entry}: {entry!r} is reserved for a model role; rename the entry")
        _build(f"methods.{entry}", build_method, spec)
    check_soups(config)
    check_sequential(config)
    refusal = strategies.fsdp_refusals(config)
    if refusal:
        raise ConfigError(f"config key {refusal}")
    try:
        paths.check_paths(config)
    except paths.PathError as e:
        raise ConfigError(f"config key {e}") from None
    for i, name in enumerate(config["evaluate"]["metrics"]):
        if name not in METRICS:
            raise ConfigError(f"config key evaluate.metrics[{i}]: unknown metric {name!r}; known: {METRICS.names()}")
    utility = (config.get("report") or {}).get("utility")
    if utility and utility not in config["evaluate"]["metrics"]:
        raise ConfigError(f"config key report.utility: {utility!r} is not one of evaluate.metrics, so no model has it")
    init_from = config["model"].get("init_from")
    if init_from and not Path(init_from).is_dir():
        raise ConfigError(f"config key model.init_from: checkpoint directory {init_from} does not exist")
    check_prompt_format(config)
    check_source(config, build_method)


def check_prompt_format(config: dict) -> None:
    """chat_template needs a checkpoint whose tokenizer has a chat template; the tags and chat
    options belong to their format."""
    model = config["model"]
    fmt = model.get("prompt_format", "plain")
    for option, owner in (("prompt_tags", "tags"), ("prompt_system", "chat_template"),
                          ("chat_template_kwargs", "chat_template")):
        if option in model and fmt != owner:
            raise ConfigError(f"config key model.{option}: only used with model.prompt_format {owner} (it is {fmt})")
    if fmt == "chat_template":
        init_from = model.get("init_from")
        if not init_from:
            raise ConfigError("config key model.prompt_format: chat_template uses the chat template of the "
                              "model.init_from checkpoint's tokenizer; set model.init_from")
        tokenizer_config = Path(init_from) / "tokenizer_config.json"
        has_template = (Path(init_from) / "chat_template.jinja").is_file() or (
            tokenizer_config.is_file() and "chat_template" in json.loads(tokenizer_config.read_text()))
        if not has_template:
            raise ConfigError(f"config key model.prompt_format: chat_template, but the tokenizer of {init_from} "
                              "has no chat template (use plain or tags)")


def check_source(config: dict, build_method) -> None:
    """The data source's own checks (forgetlab.data.muse and .tofu: check_study)."""
    from forgetlab.data import muse, tofu

    try:
        if config["data"].get("source") == "muse":
            muse.check_study(config, build_method)
        else:
            muse.check_synthetic_splits(config)
        if config["data"].get("source") == "tofu":
            tofu.check_study(config)
    except (muse.MuseDataError, tofu.TofuDataError) as e:
        raise ConfigError(f"config key {e}") from None


SWITCHES = ("attn_implementation", "gradient_checkpointing")


def model_switches(config: dict) -> dict:
    """The model section's switches that the config sets (forgetlab.model.switches reads them)."""
    return {k: config["model"][k] for k in SWITCHES if k in config.get("model", {})}


def sequential_runs(config: dict) -> dict:
    """The study's sequential-unlearning grid: chunks, regularizers, methods and splits (the
    study's splits unless `sequential.splits` names some); no runs when the section is absent."""
    section = config.get("sequential") or {}
    runs = {"chunks": section.get("chunks", 0), "regularizers": list(section.get("regularizers", [])),
            "methods": list(section.get("methods", [])), "splits": list(section.get("splits", config["splits"]))}
    if not (runs["chunks"] and runs["regularizers"] and runs["methods"] and runs["splits"]):
        runs.update(regularizers=[], methods=[], splits=[])
    return runs


def check_sequential(config: dict) -> None:
    """Each named entry exists in the study, and every split has an author for each chunk."""
    section = config.get("sequential") or {}
    for key, known in (("regularizers", config["regularizers"]), ("methods", config["methods"]), ("splits", config["splits"])):
        for i, name in enumerate(section.get(key, [])):
            if name not in known:
                raise ConfigError(f"config key sequential.{key}[{i}]: {name!r} is not one of the study's {key} "
                                  f"({', '.join(known)})")
    runs = sequential_runs(config)
    if config["data"].get("source", "synthetic") != "synthetic":
        return  # the authors of a published source are known only from its files (see check_source)
    for split in runs["splits"]:
        authors = forget_size(FORGET_SPLITS[split], config["data"]["authors"]["n"])
        if runs["chunks"] > authors:
            raise ConfigError(f"config key sequential.chunks: {runs['chunks']} chunks, but split {split} has only "
                              f"{authors} forget author(s) to share among them (set sequential.splits, or fewer chunks)")


def _build(key: str, build, spec) -> None:
    try:
        build(spec)
    except ComponentError as e:
        raise ConfigError(f"config key {key}{e.where}: {e}") from e
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config key {key}: {e}") from e


def stage_threads(config: dict, stage: str) -> int:
    return config.get("threads", {}).get(stage, 1)


def entry_components(config: dict, entry: str) -> list[dict]:
    """The regularizer components of a study entry: the entry itself (a list), or its
    `regularizers` when the entry is a mapping with workflow options (`soup`, `data_order_seed`)."""
    value = config["regularizers"][entry]
    return value["regularizers"] if isinstance(value, dict) else value


def entry_soup(config: dict, entry: str) -> dict | None:
    """The entry's `soup` option (forgetlab.soup.Soup's fields), or None for a plain fine-tune."""
    value = config["regularizers"][entry]
    return value.get("soup") if isinstance(value, dict) else None


def entry_data_order_seed(config: dict, entry: str) -> int | None:
    """The entry's `data_order_seed` option (the fine-tunes' data order reshuffled), or None."""
    value = config["regularizers"][entry]
    return value.get("data_order_seed") if isinstance(value, dict) else None


def aa_controls(config: dict, baseline: str = "none") -> list[str]:
    """The study's A/A controls of `baseline`: the entries with a data_order_seed whose components
    and soup equal the baseline's, so that they differ from it by the data order alone."""
    if baseline not in config["regularizers"]:
        return []
    return [entry for entry in config["regularizers"] if entry != baseline
            and entry_data_order_seed(config, entry) is not None
            and entry_components(config, entry) == entry_components(config, baseline)
            and entry_soup(config, entry) == entry_soup(config, baseline)]


def check_soups(config: dict) -> None:
    from forgetlab.soup import Soup

    for entry in config["regularizers"]:
        soup = entry_soup(config, entry)
        if soup is not None:
            try:
                Soup(**soup)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"config key regularizers.{entry}.soup: {e}") from e


# A job's grid coordinates: their names and types. `forgetlab <stage> --at NAME=VALUE` and the
# workflow's rules both name a job by these, and stage_params resolves its parameters from them.
COORDINATES = {"model": str, "role": str, "regularizer": str, "seed": int, "split": str, "method": str,
               "ingredient": int, "sequential_step": int, "sequential_chunks": int,
               "path": str, "stages": str}  # with `paths:`: a path's name; a stage job's stage prefix (a,b)
ROLES = ("target", "oracle")


def parse_coordinates(pairs: list[str]) -> dict:
    """`["regularizer=none", "seed=0"]` -> `{"regularizer": "none", "seed": 0}`."""
    coords = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in COORDINATES:
            raise ConfigError(f"--at {pair!r}: expected NAME=VALUE with NAME one of {', '.join(COORDINATES)}")
        try:
            coords[name] = COORDINATES[name](value)
        except ValueError:
            raise ConfigError(f"--at {pair!r}: {name} must be an integer") from None
    return coords


def check_coordinates(config: dict, stage: str, coords: dict) -> None:
    """Each coordinate names something the study has; the stage's required ones are present."""
    known = {"regularizer": config["regularizers"], "method": config["methods"], "split": config["splits"]}
    for name, names in known.items():
        if name in coords and coords[name] not in names:
            raise ConfigError(f"--at {name}={coords[name]}: the study has no such {name} (known: {', '.join(names)})")
    if "role" in coords and coords["role"] not in ROLES:
        raise ConfigError(f"--at role={coords['role']}: role is one of {', '.join(ROLES)}")
    study_paths = paths.study_paths(config)
    if "path" in coords and coords["path"] not in study_paths:
        raise ConfigError(f"--at path={coords['path']}: the study has no such path (known: {', '.join(study_paths) or 'none'})")
    if "path" in coords and coords.get("regularizer") in config["regularizers"]:
        runs_on = paths.entry_paths(config, coords["regularizer"])
        if coords["path"] not in runs_on:
            raise ConfigError(f"--at path={coords['path']}: regularizers.{coords['regularizer']} runs on "
                              f"{', '.join(runs_on)} only (its `paths` option)")
    if "stages" in coords:
        try:
            paths.check_stage_prefix(config, coords["stages"])
        except paths.PathError as e:
            raise ConfigError(str(e)) from None
    required = {"finetune": ["regularizer", "seed", "role"], "unlearn": ["regularizer", "seed", "split", "method"]}
    required = required.get(stage, []) + (["split"] if coords.get("role") == "oracle" or stage == "evaluate" else [])
    if study_paths and stage == "finetune":
        required.append("stages")
    if study_paths and (stage == "unlearn" or stage == "evaluate" and coords.get("model") != "pretrained"):
        required.append("path")
    missing = [name for name in required if name not in coords]
    if missing:
        raise ConfigError(f"forgetlab {stage.replace('_', '-')} needs --at {' --at '.join(f'{m}=...' for m in missing)}")


def snapshot(config: dict, directory: str | Path) -> Path:
    """Write the (validated) study config to `directory/<digest>.yaml` once and return the path:
    what every job of the study reads (`forgetlab <stage> --config`). Content-addressed, so a
    job's recorded command names the exact config it ran with, and an edit never rewrites it."""
    text = yaml.safe_dump(config, sort_keys=False)
    path = Path(directory) / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def stage_params(config: dict, stage: str, **coords: Any) -> dict:
    """The resolved parameters of one job, from the study config and the job's grid coordinates:
    exactly what the job reads, and what MLflow records. The one resolver: the workflow's rules
    (as their rerun trigger) and `forgetlab <stage> --config FILE --at ...` both call it."""
    check_coordinates(config, stage, coords)
    defaults = {"pretrain": {"model": "pretrained"}, "finetune": {"model": coords.get("role")},
                "unlearn": {"model": "unlearned"}, "evaluate": {"model": "target"}}.get(stage, {})
    coords = {**{k: v for k, v in defaults.items() if v is not None}, **coords}
    base = {"study": config["study"], "stage": stage, "threads": stage_threads(config, stage), **coords}
    if coords.get("path"):  # the path's stages, for the record
        base["path_stages"] = paths.study_paths(config)[coords["path"]]
    if "precision" in config and stage in ("pretrain", "finetune", "unlearn", "evaluate"):
        base["precision"] = config["precision"]  # absent: "auto" (so existing studies' params are unchanged)
    strategy = (config.get("distributed") or {}).get("strategy", "ddp")
    if config.get("distributed") and stage in strategies.data_parallel_stages(strategy):
        base["distributed"] = config["distributed"]  # absent: one process (existing studies' params unchanged)
    if config["data"].get("source") == "muse" and stage in ("prepare_data", "finetune", "unlearn", "evaluate"):
        base["data_source"] = "muse"  # raw-text training, MUSE's evaluation sets (absent: synthetic, unchanged)
    if model_switches(config) and stage in ("finetune", "unlearn", "evaluate"):  # pretrain has the model section
        base["model_switches"] = model_switches(config)  # absent: the defaults (existing studies' params unchanged)
    if stage == "prepare_data":
        if config["data"].get("source") in ("tofu", "muse"):  # its tokenizer is model.init_from's
            return {**base, "data": config["data"], "tokenizer_from": config["model"].get("init_from")}
        return {**base, "data": config["data"]}
    if stage == "pretrain":
        return {**base, "seed": config["data"]["seed"], "model": config["model"], "train": config["pretrain"]}
    if stage == "finetune":
        reg = coords["regularizer"]
        params = {**base, "train": config["finetune"], "regularizers": entry_components(config, reg)}
        if entry_soup(config, reg) is not None:
            params["soup"] = entry_soup(config, reg)
        if entry_data_order_seed(config, reg) is not None:  # absent: the data order of the job's seed
            params["data_order_seed"] = entry_data_order_seed(config, reg)
        if coords.get("split"):
            params["retain_split"] = retain_of(coords["split"])
        if coords.get("stages"):  # a stage of a training path: its data and its train overrides
            try:
                params.update(paths.stage_params(config, coords["stages"], params["role"], params.get("retain_split")))
            except paths.PathError as e:
                raise ConfigError(str(e)) from None
        return params
    if stage == "unlearn":
        params = {**base, "train": config["unlearn"], "method_spec": config["methods"][coords["method"]],
                  "retain_split": retain_of(coords["split"])}
        if coords.get("sequential_step"):  # the chunks are drawn with the data seed (forgetlab.sequential)
            params["seed_data"] = config["data"]["seed"]
        return params
    if stage == "evaluate":
        params = {**base, "evaluate": config["evaluate"], "retain_split": retain_of(coords["split"]),
                  "seed_data": config["data"]["seed"]}
        if coords.get("regularizer"):
            params["regularizers"] = entry_components(config, coords["regularizer"])
        if coords.get("method"):
            params["method_spec"] = config["methods"][coords["method"]]
        if config["data"].get("source") == "tofu":  # TOFU's retain evaluation set and the split's holdout
            from forgetlab.data.tofu import eval_files
            params["eval_files"] = eval_files(coords["split"])
        return params
    if stage == "report":
        params = {**base, "metrics": config["evaluate"]["metrics"]}
        if paths.study_paths(config):  # their order: the first path is the cross-path reference
            params["paths"] = paths.study_paths(config)
        if aa_controls(config):  # absent: no A/A control (existing studies' params unchanged)
            params["aa_controls"] = aa_controls(config)
        if (config.get("report") or {}).get("utility"):  # absent: TOFU's model_utility
            params["utility"] = config["report"]["utility"]
        return params
    raise ConfigError(f"unknown stage {stage!r}")
