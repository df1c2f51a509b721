"""`forgetlab <stage>`: every stage of the study as a command.

A job is named by the study config and its grid coordinates; its parameters are resolved from
them by forgetlab.config.stage_params, the one resolver that the workflow's rules also call:

    forgetlab finetune --config config/config.yaml --at regularizer=dropout --at seed=0 --at role=target \
        --pretrained results/default/pretrain/model --data data/default --out /tmp/target

The workflow passes a snapshot of the study config (results/<study>/configs/<digest>.yaml).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from forgetlab import forkserver
from forgetlab.config import ConfigError, load_config, parse_coordinates, stage_params


class Commands(TyperGroup):
    """Known errors raised inside a command print as one `error: ...` line and exit with status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as e:
            mlstore = sys.modules.get("forgetlab.mlstore")  # imported by the stages, not here (mlflow is slow)
            if mlstore is not None and isinstance(e, mlstore.TrackingError):
                fail(str(e))
            raise


class App(typer.Typer):
    """The `forgetlab` command: with FORGETLAB_FORKSERVER=1, run by the fork server (forgetlab.forkserver:
    torch, transformers and mlflow already imported), else, or if none can be reached, in this process."""

    def __call__(self, *args, **kwargs):
        if not args and not kwargs:
            status = forkserver.run_client(sys.argv)
            if status is not None:
                forkserver.exit_like(status)
        return self.run_here(*args, **kwargs)

    def run_here(self, *args, **kwargs):
        return super().__call__(*args, **kwargs)


app = App(cls=Commands, add_completion=False, no_args_is_help=True, help=__doc__)

ConfigOpt = typer.Option(..., "--config", help="the study config (YAML)")
AtOpt = typer.Option([], "--at", metavar="NAME=VALUE",
                     help="a grid coordinate of the job (repeatable): regularizer, seed, split, method, role "
                          "(target|oracle), ingredient, model, sequential_step, sequential_chunks, path (a training path), "
                          "stages (a path stage's prefix, e.g. world,authors)")
ThreadsOpt = typer.Option(None, "--threads", help="CPU threads (overrides the config's threads)")


def fail(message: str) -> None:
    """Print a plain one-line error (never wrapped, so paths stay whole) and exit with status 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def resolve(stage: str, config: Path, at: list[str], threads: Optional[int] = None) -> dict:
    """The job's parameters: the study config and the job's coordinates, through stage_params."""
    try:
        params = stage_params(load_config(config), stage, **parse_coordinates(at))
    except (ConfigError, OSError) as e:
        fail(str(e))
    if threads:
        params["threads"] = threads
    return params


def data_parallel(params: dict) -> None:
    """With `distributed.nproc_per_node` > 1 (pretrain, finetune; unlearn under fsdp): relaunch this command through
    torchrun in that many workers (this process is replaced), or, inside a worker, join the group."""
    from forgetlab import distributed

    if distributed.nproc(params) > 1:
        if not distributed.in_worker():
            distributed.launch(params, sys.argv[1:])
        distributed.setup(params)


def end_data_parallel() -> None:
    from forgetlab import distributed

    distributed.finish()


@app.command("prepare-data")
def prepare_data(out: Path = typer.Option(..., help="output directory, e.g. data/<study>"),
                 config: Path = ConfigOpt, threads: Optional[int] = ThreadsOpt):
    """Generate the synthetic world, QA splits and tokenizer."""
    from forgetlab.recipes import prepare_data as recipe

    recipe.run(resolve("prepare_data", config, [], threads), out)


@app.command()
def pretrain(data: Path = typer.Option(...), out: Path = typer.Option(...),
             config: Path = ConfigOpt, threads: Optional[int] = ThreadsOpt):
    """Train the small Llama from scratch (or load model.init_from)."""
    from forgetlab.recipes import pretrain as recipe

    p = resolve("pretrain", config, [], threads)
    data_parallel(p)
    recipe.run(p, data, out)
    end_data_parallel()


@app.command()
def finetune(pretrained: Path = typer.Option(...), data: Path = typer.Option(...), out: Path = typer.Option(...),
             config: Path = ConfigOpt, at: list[str] = AtOpt, threads: Optional[int] = ThreadsOpt):
    """Fine-tune a target (role=target: retain + forget) or a retain-only oracle (role=oracle, with
    its split) with one regularizer entry; a soup's ingredient with ingredient=I."""
    from forgetlab.recipes import finetune as recipe

    p = resolve("finetune", config, at, threads)
    data_parallel(p)
    recipe.run(p, pretrained, data, out)
    end_data_parallel()


@app.command()
def soup(ingredients: list[Path] = typer.Argument(..., help="fine-tuned model directories to average"),
         out: Path = typer.Option(...), config: Path = ConfigOpt, at: list[str] = AtOpt):
    """Average a soup's ingredients into one model (the fan-in of a regularizer entry's `soup`)."""
    from forgetlab.recipes import soup as recipe

    recipe.run({**resolve("finetune", config, at), "fan_in": len(ingredients)}, ingredients, out)


@app.command()
def unlearn(target: Path = typer.Option(...), data: Path = typer.Option(...), out: Path = typer.Option(...),
            reference_model: Optional[Path] = typer.Option(None, "--reference-model",
                                                           help="frozen reference of methods that need one (default: --target)"),
            config: Path = ConfigOpt, at: list[str] = AtOpt, threads: Optional[int] = ThreadsOpt):
    """Run one unlearning method on a target (or one step of a sequential run, with
    model=sequential, sequential_step and sequential_chunks: --target is the previous step's
    model and --reference-model the original target)."""
    from forgetlab.recipes import unlearn as recipe

    p = resolve("unlearn", config, at, threads)
    data_parallel(p)  # distributed.strategy fsdp only: under ddp unlearn jobs run in one process
    recipe.run(p, target, data, out, reference_model)
    end_data_parallel()


@app.command()
def evaluate(model_dir: Path = typer.Option(..., "--model-dir"), data: Path = typer.Option(...), out: Path = typer.Option(...),
             oracle: Optional[Path] = typer.Option(None, help="the oracle's evaluation directory (forget_quality, mia_reference, privleak)"),
             target: Optional[Path] = typer.Option(None, help="the target's evaluation directory (for relearn_recovery)"),
             config: Path = ConfigOpt, at: list[str] = AtOpt, threads: Optional[int] = ThreadsOpt):
    """Score one model (model=pretrained, target, oracle, unlearned or sequential); per-sample
    parquet plus aggregate metrics."""
    from forgetlab.metrics import EvalInputError
    from forgetlab.recipes import evaluate as recipe

    p = resolve("evaluate", config, at, threads)
    try:
        recipe.run(p, model_dir, data, out, oracle, target)
    except EvalInputError as e:
        fail(str(e))


@app.command()
def report(metrics: list[Path] = typer.Argument(..., help="metrics.json files of the evaluated models"),
           trajectories: list[Path] = typer.Option([], "--trajectories",
                                                   help="an unlearned model directory (repeatable); its trajectory.csv, if any, is read"),
           out: Path = typer.Option(..., help="results/<study>"), config: Path = ConfigOpt):
    """Summary table (parquet, CSV) and the forget-quality-vs-utility plot."""
    from forgetlab.recipes import report as recipe

    recipe.run(resolve("report", config, []), [*metrics, *trajectories], out)


@app.command()
def pull(study: str = typer.Argument(..., help="the study name (results/<study>, data/<study>)"),
         configfile: Path = typer.Option(..., "--configfile", help="the study's config, to mark its outputs up to date"),
         remote: Optional[str] = typer.Option(None, help="a DVC remote other than the default")):
    """Restore one finished study from the DVC remote, so that snakemake finds nothing to redo."""
    import subprocess

    from forgetlab.registry import NAME_RE

    if not NAME_RE.match(study):
        fail(f"study name {study!r} must match [a-z0-9_-]+")
    targets = [f"data/{study}.dvc", f"results/{study}.dvc"]
    missing = [t for t in targets if not Path(t).exists()]
    if missing:
        fail(f"{', '.join(missing)} not found: was the study pushed and committed?")
    subprocess.run(["dvc", "pull", *(["-r", remote] if remote else []), *targets], check=True)
    # checked-out files get checkout-order mtimes; touch them in DAG order so nothing looks stale
    subprocess.run(["snakemake", "--cores", "1", "--touch", "--configfile", str(configfile)], check=True)


@app.command()
def verify(study: str = typer.Argument(..., help="the study name (results/<study>), run or restored by make pull"),
           jobs: Optional[int] = typer.Option(None, "--jobs", help="how many jobs to rerun (default and minimum: one of each stage)"),
           seed: int = typer.Option(0, "--seed", help="the seed of the sample"),
           threads: Optional[int] = typer.Option(None, "--threads", help="rerun with this many CPU threads, not the recorded ones"),
           stage: Optional[list[str]] = typer.Option(None, "--stage", help="only jobs of this stage (repeatable), e.g. pretrain"),
           scratch: Optional[Path] = typer.Option(None, help="where to rerun (default: a new temporary directory)"),
           json_out: Optional[Path] = typer.Option(None, "--json", help="also write the verdicts to this JSON file")):
    """Rerun a seeded sample of a finished study's jobs from their recorded inputs and compare the outputs:
    identical (bit for bit), equivalent (within tolerance; the environment differs) or different (exit 1)."""
    from forgetlab.verify import VerifyError, verify as run_verify

    try:
        result = run_verify(study, jobs, seed, threads, stage, scratch, echo=typer.echo)
    except VerifyError as e:
        fail(str(e))
    if json_out:
        json_out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    if result["verdict"] == "different":
        raise typer.Exit(1)


@app.command("check-config")
def check_config(configs: list[Path] = typer.Argument(..., help="one or more study config files")):
    """Validate study configs (schema, component names and parameters): one line per bad file
    naming the key, and exit status 2 if any is bad."""
    bad = 0
    for config in configs:
        try:
            load_config(config)
        except (ConfigError, OSError) as e:
            typer.echo(f"error: {e}" if len(configs) == 1 else f"error: {config}: {e}", err=True)
            bad += 1
        else:
            typer.echo(f"{config}: ok")
    if bad:
        raise typer.Exit(2)


@app.command("mlflow-replay")
def mlflow_replay(files: list[Path] = typer.Argument(..., help="replay files written by failed jobs (results/mlflow-unsent/*.jsonl)")):
    """Send what jobs could not send to MLflow to the current tracking URI; each file becomes FILE.done."""
    from forgetlab.replay import replay

    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        fail(f"no such replay file: {', '.join(missing)}")
    for file in files:
        try:
            sent = replay(file)
        except ValueError as e:
            fail(f"{file} is not a forgetlab MLflow replay file ({e})")
        typer.echo(f"{file}: {sent['metrics']} metrics, {sent['params']} params, {sent['artifacts']} artifacts "
                   f"-> run {sent['run_id']} at {sent['uri']}")


if __name__ == "__main__":
    app()
