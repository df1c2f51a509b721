"""Preemption and crashes: a training job killed mid-run (SIGTERM or SIGKILL) and restarted with the
same command ends bit-identical to an uninterrupted run, weights and MLflow step metrics alike; and
`snakemake --rerun-incomplete` completes a study after a kill -9 of the whole pipeline.

The stage commands run as the Snakefile runs them, through a fork server (the `served` fixture): the
signal reaches the `forgetlab` client, as Snakemake's and SLURM's do. A job killed in its own process
(a SIGTERM'd data-parallel launcher and its workers) is test_distributed.py's."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from forgetlab.checkpoint import Checkpointer, CheckpointError, checkpoint_dir
from forgetlab.hooks import Hooks
from forgetlab.recipes import finetune, unlearn
from forgetlab.train import Loader, TrainConfig, TrainContext, train
from tests.helpers import (
    REPO,
    assert_same_history,
    assert_same_weights,
    cli_env,
    command,
    interrupted,
    job,
    smoke_config,
)

pytestmark = pytest.mark.e2e

# --- the stage commands, killed and restarted ---------------------------------------------------------

# case: (stage, regularizer entry or method, train settings, [(checkpoint_every, signals), ...]); the
# reference run has no checkpoints at all (checkpointing must not change what is computed)
CASES = {
    "finetune-none": ("finetune", [{"name": "none"}], dict(max_steps=240), [
        (50, [signal.SIGKILL, signal.SIGTERM]),  # a SIGKILL after a periodic checkpoint, a SIGTERM of the resumed job
        (0, [signal.SIGTERM]),  # the default: a checkpoint only on SIGTERM
    ]),
    # dropout draws from the torch RNG every step; swa's running mean is hook state: stopped inside its window
    "finetune-dropout-swa": ("finetune", [{"name": "dropout"}, {"name": "swa", "start": 0.5, "every": 5}],
                             dict(max_steps=240), [(150, [signal.SIGTERM])]),
    # npo with its retain batches, the frozen reference and the trajectory (a hook that logs)
    "unlearn-npo": ("unlearn", {"name": "npo", "beta": 0.1, "alpha": 1.0}, dict(max_steps=200, eval_every=50),
                    [(40, [signal.SIGKILL, signal.SIGTERM])]),
}


def run_to_end(cmd: list[str], cwd: Path, env: dict) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("case", sorted(CASES))
def test_killed_job_resumes_bit_identical(case, served, smoke_data, tiny_model_dir, tmp_path):
    stage, entry, settings, chains = CASES[case]
    desc = "finetune target:" if stage == "finetune" else "unlearn m ("

    def setup(name: str, **train) -> tuple[list[str], Path, dict]:
        (tmp_path / name).mkdir()
        out = tmp_path / name / "model"
        cmd = command(stage, entry, {**settings, **train}, tiny_model_dir, smoke_data, out)
        return cmd, out, cli_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / name / 'm.db'}", **served)

    cmd, reference, env = setup("reference")
    run_to_end(cmd, tmp_path / "reference", env)
    for i, (every, signals) in enumerate(chains):
        name = f"resumed{i}"
        cmd, out, env = setup(name, checkpoint_every=every)
        steps = interrupted(cmd, tmp_path / name, out, env, signals, every, desc)
        assert steps == sorted(set(steps)) and 0 < steps[0] and steps[-1] < settings["max_steps"], steps
        assert_same_weights(reference, out)
        run = assert_same_history(tmp_path / "reference" / "m.db", tmp_path / name / "m.db")
        assert run.data.tags["resumed_from_step"] == str(steps[-1])
        if stage == "unlearn":
            assert (reference / "trajectory.csv").read_text() == (out / "trajectory.csv").read_text()


# --- every stateful hook, in process: a crash right after a checkpoint, then a rerun ----------------

class Crash(BaseException):
    """Stands for a SIGKILL right after a checkpoint is written."""


def run_recipe(stage, params, model, data, out, crash_after: int | None = None) -> bool:
    saves, real_save = [], Checkpointer.save

    def save(self, state):
        real_save(self, state)
        saves.append(state["step"])
        if crash_after is not None and len(saves) >= crash_after:
            raise Crash

    recipe = finetune if stage == "finetune" else unlearn
    Checkpointer.save = save
    try:
        recipe.run(params, model, data, out)
    except Crash:
        return False
    finally:
        Checkpointer.save = real_save
    return True


HOOKS = {
    "sparsity": ("finetune", [{"name": "sparsity", "every": 2, "end": 0.9}]),
    "send": ("finetune", [{"name": "send", "every": 2, "window": 2}]),
    "nested_dropout+swa": ("finetune", [{"name": "nested_dropout"}, {"name": "swa", "start": 0.3, "every": 2}]),
    "allora": ("finetune", [{"name": "allora"}]),
    "lora+multi_sample_dropout": ("finetune", [{"name": "lora"}, {"name": "multi_sample_dropout"}]),
    "pdu": ("unlearn", {"name": "pdu", "warmup_epochs": 0}),  # dual steps from the start, so lambda is in the checkpoint
    "npo+gu_projection": ("unlearn", {"name": "npo", "plugins": ["gu_projection"]}),
    "npo+saliency": ("unlearn", {"name": "npo", "plugins": ["saliency"]}),
    "grad_diff+wagle": ("unlearn", {"name": "grad_diff", "plugins": ["wagle"]}),
    "rmu": ("unlearn", {"name": "rmu"}),
    "task_vector": ("unlearn", {"name": "task_vector"}),
}


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_stateful_hook_resumes_bit_identical(name, smoke_data, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stage, entry = HOOKS[name]
    extra = {"eval_every": 4} if stage == "unlearn" else {}
    params = job(stage, entry, max_steps=12, checkpoint_every=5, **extra)
    for db, out, crash in (("a", "reference", None), ("b", "resumed", 2)):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / db}.db")
        if crash:
            assert not run_recipe(stage, params, tiny_model_dir, smoke_data, tmp_path / out, crash_after=crash)
            assert torch.load(checkpoint_dir(tmp_path / out) / "state.pt", weights_only=True)["step"] == 10
        assert run_recipe(stage, params, tiny_model_dir, smoke_data, tmp_path / out)
    assert_same_weights(tmp_path / "reference", tmp_path / "resumed")
    run = assert_same_history(tmp_path / "a.db", tmp_path / "b.db")
    assert run.data.tags["resumed_from_step"] == "10"
    if stage == "unlearn":
        assert (tmp_path / "reference/trajectory.csv").read_text() == (tmp_path / "resumed/trajectory.csv").read_text()
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "reference/trajectory_samples.parquet"),
                                      pd.read_parquet(tmp_path / "resumed/trajectory_samples.parquet"))


@pytest.mark.parametrize("stage, entry", [("finetune", [{"name": "dropout"}]), ("unlearn", {"name": "npo"})])
def test_grouped_batches_and_batched_syncs_resume_bit_identical(stage, entry, smoke_data, tiny_model_dir, tmp_path,
                                                               monkeypatch):
    """group_by_length's data order and sync_every's steps not yet read (flushed before each checkpoint)."""
    monkeypatch.chdir(tmp_path)
    extra = {"eval_every": 4} if stage == "unlearn" else {}
    params = job(stage, entry, max_steps=12, checkpoint_every=5, group_by_length=True, length_megabatch=2,
                 sync_every=3, **extra)
    for db, out, crash in (("a", "reference", None), ("b", "resumed", 2)):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / db}.db")
        if crash:
            assert not run_recipe(stage, params, tiny_model_dir, smoke_data, tmp_path / out, crash_after=crash)
        assert run_recipe(stage, params, tiny_model_dir, smoke_data, tmp_path / out)
    assert_same_weights(tmp_path / "reference", tmp_path / "resumed")
    assert_same_history(tmp_path / "a.db", tmp_path / "b.db")


def test_a_checkpoint_for_other_params_is_discarded(smoke_data, tiny_model_dir, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    old, new = (job("finetune", [{"name": "none"}], max_steps=8, checkpoint_every=3, lr=lr) for lr in (1e-3, 2e-3))
    assert not run_recipe("finetune", old, tiny_model_dir, smoke_data, tmp_path / "out", crash_after=1)
    assert run_recipe("finetune", new, tiny_model_dir, smoke_data, tmp_path / "out")
    assert "written for other parameters or inputs; discarding it" in capfd.readouterr().err
    assert run_recipe("finetune", new, tiny_model_dir, smoke_data, tmp_path / "fresh")
    assert_same_weights(tmp_path / "fresh", tmp_path / "out")


# --- what cannot be resumed faithfully is refused ---------------------------------------------------

def _toy(tmp_path, hook, batches=None, every=2):
    examples = [{"input_ids": [i, i + 1], "labels": [i, i + 1]} for i in range(8)]
    model = torch.nn.Linear(2, 1)
    ctx = TrainContext(total_steps=4, retain=Loader(examples, 2, 0, seed=1))
    cfg = TrainConfig(epochs=1, batch_size=2, lr=0.1, checkpoint_every=every)

    def loss_fn(m, b):
        return m(b["input_ids"].float()).pow(2).mean(), {}

    batches = batches if batches is not None else iter(Loader(examples, 2, 0, seed=0))
    return lambda: train(model, loss_fn, batches, 4, cfg, hooks=[hook], context=ctx,
                         checkpoint=Checkpointer(tmp_path / "ckpt" / "state.pt", every))


class HoldsRetain(Hooks):
    """A hook that draws its own retain batches every step (like gu_projection)."""

    def __init__(self, saves: bool):
        self.saves = saves

    def setup(self, model, ctx):
        self.retain = iter(ctx.retain)
        return model

    def before_step(self, model, step, optimizer):
        next(self.retain)

    def state_dict(self):
        return {"retain": self.retain.state_dict()} if self.saves else {}


def test_a_hook_that_does_not_save_its_data_position_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not in any state_dict"):
        _toy(tmp_path, HoldsRetain(saves=False))()
    _toy(tmp_path / "ok", HoldsRetain(saves=True))()  # the same hook, saving its iterator: fine


def test_checkpoint_every_needs_a_restorable_data_order(tmp_path):
    batches = iter([{"input_ids": torch.ones(2, 2)}] * 4)
    with pytest.raises(CheckpointError, match="restorable data iterator"):
        _toy(tmp_path, Hooks(), batches=batches)()


# --- snakemake --rerun-incomplete after kill -9 of the whole pipeline -----------------------------------

def test_rerun_incomplete_completes_the_study_after_kill_9(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    for item in ("Snakefile", "workflow", "config", ".dvc/config", ".dvcignore", ".gitignore"):
        dest = work / item
        dest.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (REPO / item).is_dir() else shutil.copy)(REPO / item, dest)
    config = smoke_config()  # cut to one regularizer, one method and no sequential chain; checkpoints every few steps
    config["regularizers"] = {"none": [{"name": "none"}]}
    config["methods"] = {"npo": config["methods"]["npo"]}
    config.pop("sequential", None)
    config["finetune"].update(max_steps=150, checkpoint_every=5)  # about two seconds of training per job
    config["unlearn"]["checkpoint_every"] = 2
    (work / "config" / "smoke.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = cli_env()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "workflow"]):
        subprocess.run([*git, *args], cwd=work, env=env, check=True, capture_output=True)

    snakemake = ["snakemake", "--cores", "2", "--configfile", "config/smoke.yaml"]
    finetunes = work / "results" / "smoke" / "finetune"
    with open(tmp_path / "first.log", "w") as fh:
        proc = subprocess.Popen(snakemake, cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while not (finetunes.exists() and any(finetunes.rglob("*.ckpt/state.pt"))):  # a training job is mid-run
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # snakemake and every job it runs: one process group
        proc.wait(timeout=60)
    assert not (work / "results" / "smoke" / "summary.parquet").exists()

    # a kill -9 leaves Snakemake's lock behind: Snakemake's own recovery is --unlock, then the rerun
    subprocess.run([*snakemake, "--unlock"], cwd=work, env=env, check=True, capture_output=True)
    rerun = subprocess.run([*snakemake, "--rerun-incomplete"], cwd=work, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert (work / "results" / "smoke" / "summary.parquet").exists()
    plan = subprocess.run([*snakemake, "-n"], cwd=work, env=env, capture_output=True, text=True)
    assert "Nothing to be done" in plan.stdout + plan.stderr
    results = work / "results" / "smoke"
    logs = (results / "logs" / "finetune").rglob("*.log")
    assert any("resuming from checkpoint" in log.read_text() for log in logs), "a killed fine-tune resumed"
    leftovers = [p for p in results.rglob("*") if p.name.endswith(".ckpt") or ".tmp-" in p.name]
    assert not leftovers, leftovers
