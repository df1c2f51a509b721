"""finetune: from the pretrained weights, train the target (retain + forget) or the retain-only
oracle with one study entry's regularizers. Target and oracle share every setting but the data.
An entry's `data_order_seed` reshuffles the training data (and nothing else): the A/A control.
A stage of a training path (forgetlab.paths) starts from the previous stage's model (`--pretrained`)
and trains on its own QA split with its own settings; the entry's regularizers apply in every stage.
Its seed is drawn from (seed, stage prefix) (stage_seed), so that two paths' runs of one stage are
independent draws and each (seed, path) is a replicate of the report's tests.
A muse study trains on raw text instead of QA (training_examples)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from zlib import crc32

import numpy as np

from forgetlab import distributed
from forgetlab.checkpoint import Checkpointer
from forgetlab.data.training_sets import TRAIN_DIR
from forgetlab.losses import lm_loss
from forgetlab.model import atomic_dir, attention, checkpointing, device, load_model, load_tokenizer, save_model
from forgetlab.qa import IGNORE, collate, encode_qa, encode_text_chunks
from forgetlab.recipes import read_jsonl, set_threads, text_chunks, write_json
from forgetlab.regularizers import build_regularizers
from forgetlab.soup import Soup
from forgetlab.tracking import stage_run
from forgetlab.train import Loader, TrainConfig, TrainContext, num_steps, seed_everything, train


def training_file(params: dict) -> str:
    """The QA split trained on: a training path's stage names its own (forgetlab.paths)."""
    if params.get("training_split"):
        return params["training_split"]
    return "full" if params["role"] == "target" else params["retain_split"]


def training_examples(params: dict, tokenizer, data_dir: Path, max_length: int) -> tuple[list[dict], list[Path]]:
    """The encoded training examples and the files they come from: the QA rows of the training
    split (answer-only loss), or, in a muse study, the chunked documents of its text set (every
    token supervised; forgetlab.data.muse.TEXT_SETS: `full` for the target, `retain` for the oracle).
    A split with a training version (qa/train/<split>.jsonl: forgetlab.data.training_sets) trains on it;
    its text rows (replayed pretraining documents) are chunked and fully supervised, as in pretraining."""
    if params.get("data_source") == "muse":
        return text_chunks(tokenizer, data_dir, training_file(params), max_length)
    qa_file = data_dir / "qa" / f"{training_file(params)}.jsonl"
    if (qa_file.parent / TRAIN_DIR / qa_file.name).exists():
        qa_file = qa_file.parent / TRAIN_DIR / qa_file.name
    examples = []
    for r in read_jsonl(qa_file):
        if "text" in r:
            examples += encode_text_chunks(tokenizer, r["text"], max_length)
        else:
            examples.append(encode_qa(tokenizer, r["question"], r["answer"], max_length))
    return examples, [qa_file]


def stage_seed(seed: int, params: dict) -> int:
    """The seed of a training path's stage job (params `stages`, its prefix "a,b"): one derived from
    (seed, crc32 of the prefix) by numpy's SeedSequence. The same stage in two paths (the authors
    stage of authors,world and of world,authors) then draws its own data order and dropout masks,
    so that the paths of one seed are independent replicates (forgetlab.stats.paired_tests' units);
    the jobs that share a prefix (and a target and its oracle) share the seed. Without paths: `seed`."""
    prefix = params.get("stages")
    return seed if not prefix else int(np.random.SeedSequence([seed, crc32(prefix.encode())]).generate_state(1)[0])


def ingredient_settings(params: dict) -> tuple[int, dict]:
    """The seed and train settings of this job: a soup's ingredient varies its seed or lr; a
    training path's stage its seed (stage_seed)."""
    seed, train_cfg = stage_seed(params["seed"], params), dict(params["train"])
    if params.get("ingredient") is not None:
        seed, train_cfg["lr"] = Soup(**params["soup"]).ingredient(params["ingredient"], seed, train_cfg["lr"])
    return seed, train_cfg


def loader_seed(seed: int, params: dict) -> int:
    """The seed of the training data's order: the job's seed, or, when the entry sets
    `data_order_seed` d, a seed derived from (seed, d) by numpy's SeedSequence, so that the data
    order changes while the seed of everything else (regularizers' randomness, dropout) does not."""
    d = params.get("data_order_seed")
    return seed if d is None else int(np.random.SeedSequence([seed, d]).generate_state(1)[0])


def token_norm(examples: list[dict], batches_per_epoch: int) -> float:
    """The token_weighted setting's divisor: the mean supervised tokens per batch over an epoch."""
    return sum(sum(label != IGNORE for label in e["labels"][1:]) for e in examples) / batches_per_epoch


def run(params: dict, pretrained: Path, data_dir: Path, out: Path) -> None:
    set_threads(params)
    regularizers = build_regularizers(params["regularizers"])
    seed, train_cfg = ingredient_settings(params)
    seed_everything(seed)
    with stage_run(params, out) as mlrun, atomic_dir(out) as tmp:
        tokenizer = load_tokenizer(pretrained)
        model = checkpointing(load_model(pretrained, distributed.load_device(params), **attention(params)), params)
        cfg = TrainConfig(**train_cfg)
        examples, files = training_examples(params, tokenizer, data_dir, cfg.max_length)
        order_seed = loader_seed(seed, params)
        loader = Loader(examples, cfg.batch_size, tokenizer.pad_token_id, order_seed, device(),
                        group_by_length=cfg.group_by_length, megabatch=cfg.length_megabatch)
        steps = num_steps(cfg, len(loader))
        tokens_per_batch = token_norm(examples, len(loader)) if cfg.token_weighted else None
        probe = {k: v.to(device()) for k, v in collate(examples[: cfg.batch_size], tokenizer.pad_token_id).items()}
        ckpt = Checkpointer.for_stage(out, params, mlrun, cfg.checkpoint_every, inputs=[pretrained, *files])
        model = train(model, partial(lm_loss, regularizers=regularizers, supervised_logits=cfg.supervised_logits,
                                      tokens_per_batch=tokens_per_batch),
                      iter(loader), steps, cfg,
                      hooks=regularizers, context=TrainContext(total_steps=steps, probe=probe), log=ckpt.log,
                      desc=f"finetune {params['role']}", checkpoint=ckpt, precision=params.get("precision", "auto"),
                      strategy=distributed.strategy(params))
        mlrun.log_metrics({"train_examples": len(examples), "train_steps": steps, "train_seed": seed,
                           "loader_seed": order_seed})
        for reg in regularizers:
            mlrun.log_metrics({f"{reg.name}.{k}": v for k, v in reg.summary().items()})
        save_model(model, tokenizer, tmp)
        write_json(tmp / "forgetlab_stage.json", params)
    ckpt.remove()  # the output is in place: the checkpoint is no longer needed
