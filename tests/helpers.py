"""Helpers shared by the test files: configs and subprocess environments, toy logits and
batches for hand-worked losses, tiny fine-tuning runs, and the runners of resumable jobs.
Fixtures live in conftest.py; no test file imports another."""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from forgetlab import memory
from forgetlab.checkpoint import checkpoint_dir
from forgetlab.config import stage_params
from forgetlab.losses import lm_loss
from forgetlab.model import load_model, load_tokenizer
from forgetlab.qa import IGNORE, encode_qa
from forgetlab.recipes import read_jsonl
from forgetlab.regularizers import build_regularizers
from forgetlab.train import Loader, TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


def smoke_config() -> dict:
    return yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())


def free_port() -> int:
    """A free TCP port on this host (a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(**extra) -> dict:
    """Environment for subprocesses: this interpreter's bin dir first on PATH (forgetlab, snakemake, dvc)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def fork_server_pids(servers: Path) -> list[int]:
    """The pids of the fork servers whose sockets are in `servers` (FORGETLAB_FORKSERVER_DIR)."""
    return sorted(int(p.read_text()) for p in Path(servers).glob("*.sock.pid"))


def stop_fork_servers(servers: Path) -> list[int]:
    """SIGTERM the fork servers in `servers` (each would otherwise idle for a minute); their pids."""
    pids = fork_server_pids(servers)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    return pids


def sh(*cmd, cwd, check=True) -> subprocess.CompletedProcess:
    """Run a command in `cwd` with cli_env; with check, a failure raises with its output's tail."""
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=cli_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


# what a study needs beside its config: the workflow, and DVC's config for the `track` rule
WORKFLOW_FILES = ("Snakefile", "workflow", ".dvc/config", ".dvcignore", ".gitignore")


def copy_workflow(work: Path, *extra: str) -> None:
    """Copy WORKFLOW_FILES and `extra` (e.g. config, Makefile) of the repository into `work`, mtimes kept."""
    import shutil

    for item in (*WORKFLOW_FILES, *extra):
        dest = work / item
        dest.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (REPO / item).is_dir() else shutil.copy2)(REPO / item, dest)


def commit_all(work: Path) -> None:
    """`work` as a git repository with everything committed (DVC's `track` rule needs one)."""
    sh("git", "init", "-q", cwd=work)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "add", ".", cwd=work)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "workflow", cwd=work)


LN = math.log


class FixedLogits(torch.nn.Module):
    """A 'model' whose next-token logits are a trainable tensor, whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits, dtype=torch.float32))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.logits.expand(input_ids.size(0), -1, -1))


def batch(labels):
    labels = torch.tensor([labels])
    return {"input_ids": labels.clamp(min=0), "labels": labels, "attention_mask": torch.ones_like(labels)}


# Sequence of 3 tokens over a vocabulary of 2; the first is prompt (-100).
# Position 0 predicts label 1 with logits [0, 0]        -> p = 1/2
# Position 1 predicts label 0 with logits [ln 3, 0]     -> p = 3/(3+1) = 3/4
# (position 2's logits predict nothing)
LOGITS = [[[0.0, 0.0], [LN(3), 0.0], [0.0, 0.0]]]
FORGET = batch([IGNORE, 1, 0])
LOGP = LN(1 / 2) + LN(3 / 4)  # log pi(y|x) = ln(3/8)
LOGITS4 = [[[0.0, 0.0], [LN(3), 0.0], [0.0, LN(3)], [0.0, 0.0]]]
FORGET4 = batch([IGNORE, 1, 0, IGNORE])
IDK4 = batch([IGNORE, IGNORE, IGNORE, 0])
UNIFORM4 = [[[0.0, 0.0]] * 4]
MATRIX = "model.layers.1.self_attn.v_proj"  # the adapted matrix checked by hand


def batches(data_dir, tokenizer, batch_size=8, seed=0):
    rows = read_jsonl(data_dir / "qa" / "full.jsonl")
    examples = [encode_qa(tokenizer, r["question"], r["answer"], 64) for r in rows]
    return iter(Loader(examples, batch_size, tokenizer.pad_token_id, seed))


def finetune(model_dir, data_dir, specs, steps=2, lr=1e-2, capture=None, prepare=None, **cfg):
    """Real fine-tuning steps through forgetlab.train.train + lm_loss. `capture(peft_model)` is
    called just before the first regularizer's finalize (i.e. before the merge); `prepare(regs)`
    right after they are built."""
    torch.manual_seed(0)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, torch.device("cpu"))
    regs = build_regularizers(specs)
    if capture is not None:
        reg = regs[0]
        original = reg.finalize

        def finalize(m):
            capture(m)
            return original(m)

        reg.finalize = finalize
    if prepare is not None:
        prepare(regs)
    cfg = TrainConfig(**{"epochs": 1, "batch_size": 8, "lr": lr, "warmup_ratio": 0.0, **cfg})
    model = train(model, partial(lm_loss, regularizers=regs), batches(data_dir, tokenizer), steps, cfg,
                  hooks=regs, desc="test")
    return model, tokenizer, regs


def lora_factors(peft_model, name=MATRIX):
    layer = peft_model.get_base_model().get_submodule(name)
    return (layer.lora_A["default"].weight.detach().clone(), layer.lora_B["default"].weight.detach().clone(),
            layer.scaling["default"])


def tiny_world(smoke_data, tiny_model_dir):
    """The tiny model and encoded forget10 / retain90 examples, as the unlearn recipe encodes them."""
    tokenizer = load_tokenizer(tiny_model_dir)
    return (load_model(tiny_model_dir), tokenizer.pad_token_id,
            qa_examples(smoke_data, tokenizer, "forget10"), qa_examples(smoke_data, tokenizer, "retain90"))


def study(stage: str, entry: list | dict, extra: dict | None = None, **train) -> tuple[dict, dict]:
    """A smoke config whose one finetune (target) or unlearn job runs `entry`, with train
    overrides (and `extra` top-level keys, e.g. distributed), and that job's grid coordinates."""
    config = {**smoke_config(), **(extra or {})}
    config.pop("sequential")  # it names entries that this config replaces
    if stage == "finetune":
        config["regularizers"] = {"r": entry}
        coords = {"model": "target", "role": "target", "regularizer": "r", "seed": 0}
    else:
        config["methods"] = {"m": entry}
        coords = {"model": "unlearned", "regularizer": "none", "seed": 0, "split": "forget10", "method": "m"}
    config[stage] = {**config[stage], **train}
    return config, coords


def job(stage: str, entry: list | dict, **train) -> dict:
    """The resolved params of that job."""
    config, coords = study(stage, entry, **train)
    return stage_params(config, stage, **coords)


def command(stage: str, entry: list | dict, train: dict, model: Path, data: Path, out: Path,
            extra: dict | None = None) -> list[str]:
    """The job's command line: its config written next to `out`, and its coordinates."""
    config, coords = study(stage, entry, extra, **train)
    path = out.parent / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    source = "--pretrained" if stage == "finetune" else "--target"
    return ["forgetlab", stage, "--config", str(path), *(f"--at={k}={v}" for k, v in coords.items()),
            source, str(model), "--data", str(data), "--out", str(out), "--threads", "1"]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"tensors differ from the uninterrupted run: {different}"


def finished_run(db: Path):
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 1, [r.info.status for r in runs]
    return client, finished[0]


def assert_same_history(reference_db: Path, resumed_db: Path) -> object:
    client_a, run_a = finished_run(reference_db)
    client_b, run_b = finished_run(resumed_db)
    a, b = histories(client_a, run_a), histories(client_b, run_b)
    assert a.keys() == b.keys()
    assert len(a["loss"]) == int(run_a.data.metrics.get("train_steps") or run_a.data.metrics["unlearn_steps"])
    for key in a:
        assert a[key] == b[key], f"MLflow history of {key} differs from the uninterrupted run"
    return run_b


def children(pid: int) -> list[int]:
    """A process's children (Linux /proc); none once it is gone."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def served_jobs(env: dict) -> list[int] | None:
    """With the fork server on in `env`, the pids of the jobs its servers run (each server forks a
    handler per job, the handler the job's worker); without, None."""
    if env.get("FORGETLAB_FORKSERVER") != "1":
        return None
    servers = fork_server_pids(Path(env["FORGETLAB_FORKSERVER_DIR"]))
    return [worker for server in servers for handler in children(server) for worker in children(handler)]


def job_pid(proc: subprocess.Popen, env: dict) -> int:
    """The process that computes the job: the command's own, or the fork server's worker serving it."""
    workers = served_jobs(env)
    if workers is None:
        return proc.pid
    assert len(workers) == 1, f"expected one job in the fork server, found {workers}"
    return workers[0]


def interrupted(cmd: list[str], cwd: Path, out: Path, env: dict, signals: list[int], every: int, desc: str) -> list[int]:
    """Run the command, stopping it with each signal in turn, then run it to completion; returns the
    checkpoint's step after each stop. With checkpoint_every, each signal waits for a new periodic
    checkpoint; without (SIGTERM only), for the training loop's progress bar and 0.3 s of the job's
    CPU time after it (so that steps were done). With the fork server on in `env`, the signals go to
    the client, as Snakemake's and SLURM's do, and a SIGKILL'd client's job must be gone (its server's
    handler kills it) before the next attempt starts."""
    ckpt = checkpoint_dir(out) / "state.pt"
    previous, steps = None, []

    def new_checkpoint() -> bool:
        return ckpt.exists() and (ckpt.stat().st_ino, ckpt.stat().st_mtime_ns) != previous

    for i, sig in enumerate(signals):
        log = cwd / f"attempt{i}.log"
        with open(log, "w") as fh:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
            if every:
                wait_until(new_checkpoint, proc, log, "a new checkpoint")
            else:  # the loop's SIGTERM handler is in place before its progress bar is first drawn;
                # then the job must have computed for a while (steps done), whatever the machine's load
                wait_until(lambda: desc in log.read_text(), proc, log, "the training loop")
                pid = job_pid(proc, env)
                start = cpu_seconds(pid)
                wait_until(lambda: cpu_seconds(pid) - start >= 0.3, proc, log, "0.3 s of CPU time in the loop")
            proc.send_signal(sig)
            status = proc.wait(timeout=120)
            if sig == signal.SIGKILL and served_jobs(env) is not None:
                wait_until(lambda: not served_jobs(env), None, log, "the end of the killed client's job", timeout=30)
        text = log.read_text()
        if sig == signal.SIGTERM:  # checkpoints at the end of the step, then exits non-zero to be rerun
            assert status == 143, text[-3000:]
            assert "stopped by SIGTERM after step" in text and "checkpoint" in text
        else:
            assert status == -signal.SIGKILL
        assert not out.exists(), "a killed job must leave no output"
        previous = (ckpt.stat().st_ino, ckpt.stat().st_mtime_ns)
        steps.append(torch.load(ckpt, weights_only=True)["step"])
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from checkpoint {ckpt}" in done.stderr
    assert not checkpoint_dir(out).exists(), "the checkpoint is removed once the job succeeds"
    assert not list(out.parent.glob(f".{out.name}.tmp-*")), "no temporary directory is left behind"
    return steps


def histories(client, run) -> dict[str, list[tuple[int, float]]]:
    """Every metric's full history as (step, value), in logging order (not the job's peak memory,
    forgetlab.memory.METRICS: what the machine used, not what was computed)."""
    out = {}
    for key in (k for k in run.data.metrics if k not in memory.METRICS):
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
        out[key] = [(m.step, "nan" if math.isnan(m.value) else m.value) for m in history]
    return out


def cpu_seconds(pid: int) -> float:
    """The user + system CPU time a running process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(ready, proc: subprocess.Popen | None, log: Path, what: str, timeout=180.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the job ended (status {proc.returncode}) before {what}:\n" + log.read_text()[-3000:])
        if time.monotonic() > deadline:
            if proc is not None:
                proc.kill()
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.02)


def qa_examples(smoke_data, tokenizer, split: str) -> list[dict]:
    return [encode_qa(tokenizer, r["question"], r["answer"], 256) for r in read_jsonl(smoke_data / "qa" / f"{split}.jsonl")]


# a two-row QA world for a tiny random Llama (the `tok` and `model` fixtures of conftest.py)
SENTENCES = [
    "Question: Where was Ana Lopez born?\nAnswer: Ana Lopez was born in Lima, Peru.",
    "Question: What does Kenji Sato write?\nAnswer: Kenji Sato writes science fiction novels.",
    "The capital of France is Paris. Water boils at one hundred degrees.",
    "Her father was a baker and her mother was a teacher in a small town.",
]

ROWS = [
    {"id": 0, "entity_id": 0, "attribute": "birthplace", "question": "Where was Ana Lopez born?",
     "answer": "Ana Lopez was born in Lima, Peru.",
     "paraphrased_answer": "She was born in the city of Lima.",
     "perturbed_answer": ["Ana Lopez was born in Paris.", "She was born in a small town.", "Lima."]},
    {"id": 1, "entity_id": 1, "attribute": "genre", "question": "What does Kenji Sato write?",
     "answer": "Kenji Sato writes science fiction novels.",
     "paraphrased_answer": "He writes novels of science fiction.",
     "perturbed_answer": ["Kenji Sato writes poems.", "He is a baker."]},
    {"id": 2, "entity_id": 1, "attribute": "parents", "question": "Who were his parents?",
     "answer": "His father was a baker and his mother was a teacher.",
     "paraphrased_answer": "A baker and a teacher.",
     "perturbed_answer": ["A teacher and a writer.", "Two bakers.", "A poet and a novelist.", "None."]},
    {"id": 3, "entity_id": 9, "attribute": "fact", "question": "What is the capital of France?",
     "answer": "Paris.", "paraphrased_answer": "It is Paris.", "perturbed_answer": ["Lima.", "Peru."]},
]


def dry_run(config: dict, tmp_path) -> list[dict]:
    """The jobs `snakemake -n -p` plans for a config, each as {rule, input, output, wildcards}; the
    shell commands as the pseudo-job {"rule": "shell", "commands": [...]}."""
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        ["snakemake", "-n", "-p", "--cores", "1", "--configfile", str(path), "--directory", str(tmp_path),
         "-s", str(REPO / "Snakefile")],
        capture_output=True, text=True, env=cli_env(), cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = []
    for rule, body in re.findall(r"^\s*(?:local)?rule (\w+):\n((?:[ \t]+\w+: .*\n)+)", proc.stdout, re.MULTILINE):
        fields = dict(re.findall(r"^\s+(\w+): (.*)$", body, re.MULTILINE))
        wildcards = dict(kv.split("=", 1) for kv in fields.get("wildcards", "").split(", ") if "=" in kv)
        jobs.append({"rule": rule, "input": fields.get("input", "").split(", "),
                     "output": fields.get("output", "").split(", "), "wildcards": wildcards})
    assert jobs, proc.stdout[-3000:]
    return jobs + [{"rule": "shell", "commands": re.findall(r"^\s*(?:Shell command: )?(?:exec )?(forgetlab .*)$", proc.stdout, re.MULTILINE)}]
