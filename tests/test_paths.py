"""Training paths (forgetlab.paths, forgetlab.path_report): the config checks, the stage models
and what each starts from, the resolver's parameters, and the cross-path measures on worked
examples. The DAG and an end-to-end run: tests/test_paths_workflow.py."""

from __future__ import annotations

import copy
import json
import zlib

import numpy as np
import pandas as pd
import pytest
import yaml

from forgetlab import path_report
from forgetlab.config import ConfigError, check_config, stage_params, validate_schema
from forgetlab.paths import entry_paths, parse_stage_model, previous_model, stage_jobs, stage_model
from forgetlab.recipes.report import with_path
from tests.helpers import REPO, smoke_config


def paths_config() -> dict:
    return yaml.safe_load((REPO / "config" / "paths_smoke.yaml").read_text())


def check(config):
    validate_schema(config)
    check_config(config)


# --- the config ----------------------------------------------------------------------------------


def test_the_paths_smoke_config_is_valid():
    check(paths_config())


def edited(**sections) -> dict:
    config = copy.deepcopy(paths_config())
    for key, value in sections.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config


@pytest.mark.parametrize("sections, message", [
    ({"paths": {"p": ["authors", "wrold"]}}, "config key paths.p[1]: unknown stage 'wrold'; known: authors, world"),
    ({"paths": {"p": ["world"]}}, "config key paths.p: no stage with `data: authors` (one of: authors); every path needs"),
    ({"paths": {"a": ["authors", "world"], "b": ["authors", "world"]}}, "config key paths.b: the same stages in the same order as paths.a"),
    ({"paths": {"forget10": ["authors"]}}, "config key paths.forget10: 'forget10' is a directory name of the layout"),
    ({"stages": {"target": {"data": "authors"}}, "paths": {"p": ["target"]}}, "config key stages.target: 'target' is a directory name"),
    ({"paths": None}, "config key stages: no `paths:` section orders them"),
    ({"stages": None}, "config key <top level>: 'stages' is a dependency of 'paths'"),
    ({"stages": {"authors": {"data": "books"}}}, "config key stages.authors.data: 'books' is not one of ['authors', 'world']"),
    ({"stages": {"authors": {"data": "authors", "train": {"lr": -1}}}}, "config key stages.authors.train.lr"),
    ({"stages": {"Authors": {"data": "authors"}}}, "config key stages: 'Authors' does not match"),
    ({"paths": {"p": ["authors", "authors"]}}, "config key paths.p: ['authors', 'authors'] has non-unique elements"),
    ({"paths": {"p": []}}, "config key paths.p: [] should be non-empty"),
    ({"regularizers": {"none": [{"name": "none"}], "aa": {"regularizers": [{"name": "none"}], "paths": ["sideways"]}}},
     "config key regularizers.aa.paths[0]: unknown path 'sideways'; known: authors_world, world_authors"),
    ({"regularizers": {"aa": {"regularizers": [{"name": "none"}], "paths": ["world_authors", "world_authors"]}}},
     "config key regularizers.aa.paths: a path named twice"),
    ({"regularizers": {"aa": {"regularizers": [{"name": "none"}], "paths": []}}},
     "config key regularizers.aa.paths: [] should be non-empty"),
])
def test_a_bad_paths_section_names_the_key(sections, message):
    with pytest.raises(ConfigError) as err:
        check(edited(**sections))
    assert message in str(err.value)


def test_an_entry_runs_on_the_paths_it_names_else_on_every_path():
    config = edited(regularizers={"none": [{"name": "none"}],
                                  "aa": {"regularizers": [{"name": "none"}], "data_order_seed": 1, "paths": ["world_authors"]}})
    check(config)
    assert entry_paths(config, "none") == ["authors_world", "world_authors"] and entry_paths(config, "aa") == ["world_authors"]
    stage_params(config, "unlearn", regularizer="aa", seed=0, split="forget10", method="npo", path="world_authors")
    with pytest.raises(ConfigError, match=r"--at path=authors_world: regularizers.aa runs on world_authors only"):
        stage_params(config, "unlearn", regularizer="aa", seed=0, split="forget10", method="npo", path="authors_world")
    without = smoke_config()
    without["regularizers"] = {"none": {"regularizers": [{"name": "none"}], "paths": ["p"]}}
    with pytest.raises(ConfigError, match=r"config key regularizers.none.paths: the study has no `paths:` section"):
        check(without)
    assert entry_paths(smoke_config(), "none") == []


def test_a_soup_entry_is_refused_with_paths():
    config = edited(regularizers={"soup": {"regularizers": [{"name": "none"}], "soup": {"k": 2}}})
    with pytest.raises(ConfigError, match=r"config key regularizers.soup.soup: soups are not supported with `paths:`"):
        check(config)


# --- the stage models ----------------------------------------------------------------------------


def test_shared_prefixes_are_one_job_and_an_oracle_shares_the_target_before_its_authors_stage():
    jobs = stage_jobs(paths_config(), ["forget10"])
    assert sorted(jobs) == sorted([
        "stages/authors/target", "stages/authors/forget10/oracle",  # the first stage of authors_world
        "stages/authors/world/target", "stages/authors/world/forget10/oracle",
        "stages/world/target",  # world_authors: its oracle chain starts from the same model
        "stages/world/authors/target", "stages/world/authors/forget10/oracle",
    ])
    config = paths_config()
    config["paths"]["authors_only"] = ["authors"]  # a prefix of authors_world: no new job
    assert sorted(stage_jobs(config, ["forget10"])) == sorted(jobs)
    assert len(stage_jobs(paths_config(), ["forget05", "forget10"])) == 7 + 3  # one oracle chain more per split


@pytest.mark.parametrize("tuned, start", [
    ("stages/authors/target", None),  # the pretrained model
    ("stages/authors/forget10/oracle", None),
    ("stages/authors/world/target", "stages/authors/target"),
    ("stages/authors/world/forget10/oracle", "stages/authors/forget10/oracle"),
    ("stages/world/authors/forget10/oracle", "stages/world/target"),  # no authors stage yet: the target's
])
def test_each_stage_starts_from_the_previous_stage_of_its_chain(tuned, start):
    assert previous_model(tuned, {"authors"}) == start


def test_stage_model_names_round_trip():
    for prefix, role, split in ((["a"], "target", None), (["a", "b"], "oracle", "forget05")):
        assert parse_stage_model(stage_model(prefix, role, split, {"a"})) == (prefix, role, split)
    assert stage_model(["w"], "oracle", "forget10", {"a"}) == "stages/w/target"
    with pytest.raises(ValueError, match="not a stage model"):
        parse_stage_model("target")


# --- the resolver --------------------------------------------------------------------------------


def test_a_stage_job_trains_its_own_data_with_its_own_settings():
    config = paths_config()
    world = stage_params(config, "finetune", regularizer="none", seed=0, role="oracle", split="forget10",
                         stages="authors,world")
    assert (world["train_stage"], world["stage_data"], world["training_split"]) == ("world", "world", "world_train")
    assert world["train"] == {**config["finetune"], "epochs": 1}  # the stage's override
    authors = {role: stage_params(config, "finetune", regularizer="none", seed=0, role=role, stages="world,authors",
                                  **({"split": "forget10"} if role == "oracle" else {}))
               for role in ("target", "oracle")}
    assert authors["target"]["training_split"] == "full" and authors["oracle"]["training_split"] == "retain90"
    assert authors["target"]["train"] == config["finetune"]
    assert authors["target"]["regularizers"] == [{"name": "none"}]  # the entry's regularizers, in every stage


def test_unlearning_and_evaluation_name_their_path():
    config = paths_config()
    params = stage_params(config, "unlearn", regularizer="none", seed=0, split="forget10", method="npo", path="world_authors")
    assert params["path"] == "world_authors" and params["path_stages"] == ["world", "authors"]
    assert stage_params(config, "report")["paths"] == {"authors_world": ["authors", "world"], "world_authors": ["world", "authors"]}


@pytest.mark.parametrize("stage, coords, message", [
    ("finetune", {"role": "target"}, "needs --at stages=..."),
    ("unlearn", {"split": "forget10", "method": "npo"}, "needs --at path=..."),
    ("evaluate", {"split": "forget10", "model": "target"}, "needs --at path=..."),
    ("unlearn", {"split": "forget10", "method": "npo", "path": "sideways"}, "--at path=sideways: the study has no such path"),
    ("finetune", {"role": "target", "stages": "world,world"}, "--at stages=world,world: not a prefix of any"),
    ("finetune", {"role": "oracle", "split": "forget10", "stages": "world"}, "no authors stage has run yet"),
])
def test_a_path_coordinate_the_study_lacks_is_named(stage, coords, message):
    with pytest.raises(ConfigError, match=message):
        stage_params(paths_config(), stage, regularizer="none", seed=0, **coords)


def test_without_paths_the_params_are_as_before():
    config = smoke_config()
    finetune = stage_params(config, "finetune", regularizer="none", seed=0, role="target")
    assert not {"stages", "train_stage", "training_split", "path"} & set(finetune)
    assert "paths" not in stage_params(config, "report")
    assert stage_params(config, "evaluate", model="pretrained", split="forget10")["model"] == "pretrained"
    with pytest.raises(ConfigError, match="no such path"):
        stage_params(config, "unlearn", regularizer="none", seed=0, split="forget10", method="npo", path="p")


def test_the_summary_gets_a_path_column_only_with_paths():
    assert with_path(["study", "seed", "model_path"], False) == ["study", "seed", "model_path"]
    assert with_path(["study", "seed", "model_path"], True) == ["study", "seed", "path", "model_path"]


# --- the cross-path measures ---------------------------------------------------------------------


def unlearned(path, method, seed, **metrics):
    return {"model": "unlearned", "regularizer": "none", "method": method, "split": "forget10", "seed": seed,
            "path": path, **metrics}


def test_spread_over_paths():
    summary = pd.DataFrame([
        unlearned("a", "npo", 0, forget_quality=0.1, model_utility=0.5),
        unlearned("b", "npo", 0, forget_quality=0.001, model_utility=0.3),
        {**unlearned("a", None, 0, forget_quality=0.2, model_utility=0.6), "model": "target"},
        {**unlearned("b", None, 0, forget_quality=0.2, model_utility=0.6), "model": "target"},
        {"model": "pretrained", "split": "forget10", "path": None, "forget_quality": None, "model_utility": 0.1,
         "regularizer": None, "method": None, "seed": None},
        {**unlearned("a", "npo", 0, forget_quality=0.5, model_utility=0.5), "regularizer": "aa"},  # on path a only
    ])
    assert set(path_report.spread(summary)["regularizer"]) == {"none"}  # one path: no spread over paths
    table = path_report.spread(summary).set_index(["method", "metric"])
    fq = table.loc[("npo", "forget_quality")]
    assert (fq["min"], fq["max"], fq["spread"]) == pytest.approx((-3.0, -1.0, 2.0))  # log10 0.001, log10 0.1
    assert fq["sd"] == pytest.approx(2.0 / 2 ** 0.5) and (fq["min_path"], fq["max_path"], fq["n_paths"]) == ("b", "a", 2)
    assert table.loc[("npo", "model_utility"), "spread"] == pytest.approx(0.2)
    assert table.loc[("target", "model_utility"), "spread"] == 0.0 and table.loc[("target", "model_utility"), "sd"] == 0.0
    assert set(table.index.get_level_values("method")) == {"npo", "target"}  # not the pretrained model


def test_each_path_is_tested_against_the_reference_pooled_and_per_regularizer():
    rows = []
    for reg in ("none", "dropout"):
        for k, (method, seed) in enumerate((m, s) for m in ("ga", "npo") for s in (0, 1, 2)):
            rows.append({**unlearned("a", method, seed, forget_quality=0.5, model_utility=0.4), "regularizer": reg})
            # path b: utility higher by 0.1 + 0.01 (k + 1), forget quality that many decades lower, for both
            d = 0.1 + 0.01 * (k + 1)
            rows.append({**unlearned("b", method, seed, forget_quality=0.5 * 10 ** -d, model_utility=0.4 + d),
                         "regularizer": reg})
    # an entry on path a only (its `paths` option) pairs with nothing: no row of its own, the pooled test unchanged
    rows += [{**unlearned("a", m, s, forget_quality=1e-9, model_utility=0.9), "regularizer": "aa"}
             for m in ("ga", "npo") for s in (0, 1, 2)]
    table = path_report.path_tests(pd.DataFrame(rows), reference="a").set_index(["regularizer", "metric"])
    assert set(table["path"]) == {"b"} and set(table["reference_path"]) == {"a"}
    assert set(table.index.get_level_values("regularizer")) == {"all", "none", "dropout"}
    # the unit is the seed: seed s has k = s and k = 3 + s, so its mean difference is 0.1 + 0.01 (s + 2.5)
    # = 0.125, 0.135, 0.145 (pooled and per regularizer alike): t = 0.135 / (0.01 / sqrt 3), and with 2 df
    # the two-sided p is 1 - t / sqrt(2 + t^2)
    t = 0.135 / (0.01 / 3 ** 0.5)
    p = 1 - t / (2 + t * t) ** 0.5
    for metric, sign in (("model_utility", 3), ("forget_quality", 0)):
        row = table.loc[("all", metric)]  # pooled: 12 model pairs a seed's 4; Holm over the family's 2 metrics
        assert (row["n_pairs"], row["n_model_pairs"], row["n_positive"], row["family"]) == (3, 12, sign, "path")
        assert row["p_value"] == pytest.approx(p) and row["p_holm"] == pytest.approx(2 * p) and row["reject"]
        for reg in ("none", "dropout"):  # per regularizer: 6 model pairs, Holm over 2 regularizers x 2 metrics
            row = table.loc[(reg, metric)]
            assert (row["n_pairs"], row["n_model_pairs"], row["n_positive"]) == (3, 6, sign)
            assert row["family"] == "path_by_regularizer" and row["p_value"] == pytest.approx(p)
            assert row["p_holm"] == pytest.approx(4 * p) and row["reject"]
    assert table.loc[("all", "forget_quality"), "mean_diff"] == pytest.approx(-0.135)  # log10
    assert table.loc[("all", "forget_quality"), "statistic"] == pytest.approx(-t)


def write_evaluation(directory, record, forget_truth_ratios):
    directory.mkdir(parents=True)
    (directory / "metrics.json").write_text(json.dumps({**record, "metrics": {}}))
    pd.DataFrame({"split": "forget", "id": range(len(forget_truth_ratios)), "truth_ratio": forget_truth_ratios}).to_parquet(
        directory / "samples.parquet")
    return directory / "metrics.json"


def test_cross_oracle_forget_quality(tmp_path):
    cell = {"regularizer": "none", "split": "forget10", "seed": 0}
    files = [
        write_evaluation(tmp_path / "a" / "oracle", {**cell, "model": "oracle", "path": "a"}, [0.1, 0.2, 0.3]),
        write_evaluation(tmp_path / "b" / "oracle", {**cell, "model": "oracle", "path": "b"}, [0.7, 0.8, 0.9]),
        write_evaluation(tmp_path / "a" / "npo", {**cell, "model": "unlearned", "method": "npo", "path": "a"}, [0.1, 0.2, 0.3]),
        write_evaluation(tmp_path / "pretrained", {"model": "pretrained", "split": "forget10"}, [0.5, 0.5, 0.5]),
    ]
    table = path_report.cross_oracle(files)
    assert table[["path", "oracle_path", "own_oracle"]].values.tolist() == [["a", "a", True], ["a", "b", False]]
    # KS of identical samples: p 1; of disjoint samples of 3 and 3: the exact p 2 / C(6, 3) = 0.1
    assert table["forget_quality"].tolist() == pytest.approx([1.0, 0.1])
    assert table["log10_forget_quality"].tolist() == pytest.approx([0.0, -1.0])


def test_trajectory_mass_is_the_seed_mean_per_path():
    traj = pd.DataFrame({"regularizer": "none", "method": "npo", "split": "forget10", "path": ["a", "a", "b", "b"],
                         "seed": [0, 1, 0, 1], "step": 2, "forget_prob": [0.2, 0.4, 0.5, 0.7],
                         "forget_paraphrased_prob": [0.1, 0.3, 0.2, 0.2]})
    table = path_report.mass(traj).set_index("path")
    assert table["forget_prob"].tolist() == pytest.approx([0.3, 0.6])
    assert table["forget_paraphrased_prob"].tolist() == pytest.approx([0.2, 0.2])
    assert table["n_seeds"].tolist() == [2, 2] and "forget_perturbed_prob" not in table  # only what was recorded


def test_the_other_figures_show_the_reference_path():
    summary = pd.DataFrame({"path": [None, "a", "b"], "model": ["pretrained", "target", "target"]})
    (only,) = path_report.reference_path(["a", "b"], summary)
    assert only["model"].tolist() == ["pretrained", "target"]
    stats_table = pd.DataFrame({"regularizer": ["none"], "metric": ["x"], "value": [1.0], "seed": [0], "path": ["a"]})
    assert path_report.per_path(lambda t: t.assign(n=len(t)), stats_table).columns[0] == "path"


def test_the_figure_marks_each_paths_oracle_level():
    summary = pd.DataFrame({"model": ["oracle", "oracle", "oracle", "target"], "regularizer": "none", "split": "forget10",
                            "path": ["a", "a", "b", "a"], "forget_prob": [0.2, 0.4, 0.5, 0.9]})
    assert path_report.oracle_levels(summary) == pytest.approx({("none", "forget10", "a"): 0.3, ("none", "forget10", "b"): 0.5})


def test_collapse_is_judged_against_the_models_own_paths_oracle():
    from forgetlab.recipes.report import flag_collapsed

    cell = {"regularizer": "none", "split": "forget10", "seed": 0}
    summary = pd.DataFrame([
        {**cell, "model": "oracle", "method": None, "path": "a", "forget_prob": 0.5, "retain_prob": 0.9},
        {**cell, "model": "oracle", "method": None, "path": "b", "forget_prob": 0.1, "retain_prob": 0.9},
        {**cell, "model": "unlearned", "method": "npo", "path": "a", "forget_prob": 0.3, "retain_prob": 0.4},
        {**cell, "model": "unlearned", "method": "npo", "path": "b", "forget_prob": 0.3, "retain_prob": 0.4},
    ])
    flags = flag_collapsed(summary).set_index(["model", "path"])["collapsed"]
    assert flags[("unlearned", "a")] == 1.0  # both probs below path a's oracle forget prob, 0.5
    assert flags[("unlearned", "b")] == 0.0  # not below path b's, 0.1


def test_a_stage_job_draws_its_seed_from_the_seed_and_its_stage_prefix():
    # the authors stage of two paths gets two seeds, so the paths of one seed are independent replicates;
    # a target and its oracle (one prefix) share theirs; a job outside training paths keeps the seed
    from forgetlab.recipes.finetune import stage_seed
    first, second = stage_seed(3, {"stages": "authors"}), stage_seed(3, {"stages": "world,authors"})
    assert stage_seed(3, {}) == stage_seed(3, {"stages": None}) == 3
    assert first == int(np.random.SeedSequence([3, zlib.crc32(b"authors")]).generate_state(1)[0])
    assert len({first, second, stage_seed(4, {"stages": "authors"})}) == 3
    assert stage_seed(3, {"stages": "authors", "role": "oracle"}) == first
