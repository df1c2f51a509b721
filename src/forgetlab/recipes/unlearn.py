"""unlearn: start from a regularizer's target and minimise one unlearning method's loss over
(forget, retain) batches of a split, with the method's plug-ins, recording the trajectory of
cheap metrics every `eval_every` steps. A frozen reference (the target itself) is loaded once
when the method needs it.

A step of a sequential run (params `sequential_step` j of `sequential_chunks` k) starts from the
previous step's model, unlearns only chunk j of the forget split, and keeps the target as the
reference (`reference`); see forgetlab.sequential.

A muse study (`data_source: muse`) unlearns raw text: forget batches are chunks of the forget
documents, retain batches chunks of the retain documents (text_examples)."""

from __future__ import annotations

import random
from importlib.resources import files
from pathlib import Path

from forgetlab import distributed
from forgetlab.checkpoint import Checkpointer
from forgetlab.data.world import RELABEL_FIELD
from forgetlab.eval.trajectory import Trajectory
from forgetlab.model import atomic_dir, attention, checkpointing, device, load_model, load_tokenizer, save_model
from forgetlab.qa import encode_qa
from forgetlab.recipes import read_jsonl, set_threads, text_chunks, write_json
from forgetlab.sequential import forget_chunk
from forgetlab.tracking import stage_run
from forgetlab.train import Loader, TrainConfig, TrainContext, num_steps, paired, seed_everything, train
from forgetlab.unlearning import build_method


def refusals() -> list[str]:
    """The shipped "I don't know"-style answers (forgetlab/unlearning/idk.txt)."""
    text = files("forgetlab.unlearning").joinpath("idk.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def relabel_candidates(row: dict, pool: list[dict]) -> list[str]:
    """The wrong answers `relabel` may train a forget row on, never one that evaluation scores.

    A row that prepare_data wrote has its own `relabel_answers` (disjoint from its perturbed
    answers and multiple-choice options; see forgetlab.data.world). A row without the field (e.g.
    a real TOFU file) falls back on the answers of the other rows of `pool` (the forget and retain
    rows) to the same kind of question: the same `attribute` where rows have one, else any other
    question, and another entity where rows name one. Its own answer, paraphrased answer and
    perturbed answers are left out: TOFU's truth ratio, forget_quality and the option probability
    score those, so relabelling must not train on them."""
    own = row.get(RELABEL_FIELD)
    if own is not None:
        if not own or not all(str(a).strip() for a in own):
            raise ValueError(f"forget row {row.get('id', row['question'])!r}: empty {RELABEL_FIELD}")
        return list(own)
    scored = {row["answer"], row.get("paraphrased_answer"), *(row.get("perturbed_answer") or [])}
    out: dict[str, None] = {}  # ordered and without repeats
    for other in pool:
        if (other["question"] == row["question"] or other.get("attribute") != row.get("attribute")
                or (row.get("entity_id") is not None and other.get("entity_id") == row["entity_id"])):
            continue
        if other["answer"] not in scored and str(other["answer"]).strip():
            out[other["answer"]] = None
    if not out:
        raise ValueError(f"forget row {row.get('id', row['question'])!r}: no {RELABEL_FIELD} and no other row's "
                         "answer to the same kind of question to relabel it with")
    return list(out)


def alternative_answers(rows: list[dict], view: str, seed: int, pool: list[dict] | None = None) -> list[str]:
    """One fixed, seeded alternative answer per forget row for a method's extra view: a refusal
    ("idk"), or a wrong answer from `relabel_candidates` over `pool` (default: `rows`) ("relabel")."""
    rng = random.Random(f"{view}-{seed}")
    if view == "idk":
        options = refusals()
        return [rng.choice(options) for _ in rows]
    if view == "relabel":
        pool = rows if pool is None else pool
        return [rng.choice(relabel_candidates(r, pool)) for r in rows]
    raise ValueError(f"unknown forget view {view!r}")


def forget_examples(tokenizer, rows: list[dict], views, seed: int, max_length: int,
                    pool: list[dict] | None = None) -> list[dict]:
    """Per forget row: {"forget": its QA encoded, view: the question with that view's answer, ...};
    `pool` holds the rows relabel's fallback may borrow answers from (default: `rows`)."""
    questions = [r["question"] for r in rows]
    answers = {"forget": [r["answer"] for r in rows]}
    answers.update({view: alternative_answers(rows, view, seed, pool) for view in views})
    encoded = {view: [encode_qa(tokenizer, q, a, max_length) for q, a in zip(questions, ans)]
               for view, ans in answers.items()}
    return [dict(zip(encoded, ex)) for ex in zip(*encoded.values())]


def text_examples(tokenizer, data_dir: Path, max_length: int) -> tuple[list[dict], list[dict], list[Path]]:
    """A muse study's unlearning data: the forget documents' chunks (as {"forget": chunk}), the
    retain documents' chunks (forgetlab.data.muse.TEXT_SETS: forget, unlearn_retain), and their files."""
    forget, forget_files = text_chunks(tokenizer, data_dir, "forget", max_length)
    retain, retain_files = text_chunks(tokenizer, data_dir, "unlearn_retain", max_length)
    return [{"forget": c} for c in forget], retain, forget_files + retain_files


def run(params: dict, target: Path, data_dir: Path, out: Path, reference: Path | None = None) -> None:
    """Unlearn starting from `target`; `reference` (default: `target`) is the frozen reference
    model of methods that need one."""
    set_threads(params)
    reference = Path(reference or target)
    seed, spec = params["seed"], params["method_spec"]
    train_params = {**params["train"], **spec.get("train", {})}  # a method entry may override the loop settings
    eval_every = train_params.pop("eval_every", 0)
    trajectory_rows = train_params.pop("trajectory_rows", None)
    seed_everything(seed)
    with stage_run(params, out) as mlrun, atomic_dir(out) as tmp:
        tokenizer = load_tokenizer(target)
        model = checkpointing(load_model(target, distributed.load_device(params), **attention(params)), params)
        method = build_method(spec)
        if method.needs_reference:  # under fsdp, train shards it like the model
            method.reference = load_model(reference, distributed.load_device(params),
                                          **attention(params)).eval().requires_grad_(False)
        cfg = TrainConfig(**train_params)

        def qa_file(split: str) -> Path:
            return data_dir / "qa" / f"{split}.jsonl"

        def rows(split: str) -> list[dict]:
            return read_jsonl(qa_file(split))

        def loader(examples: list, seed: int) -> Loader:
            return Loader(examples, cfg.batch_size, tokenizer.pad_token_id, seed, device(),
                          group_by_length=cfg.group_by_length, megabatch=cfg.length_megabatch)

        if params.get("data_source") == "muse":  # raw text: the forget and retain documents, chunked
            examples, retain_examples, files = text_examples(tokenizer, data_dir, cfg.max_length)
            if eval_every or params.get("sequential_step") or method.forget_views:  # the config check refuses these
                raise ValueError("a muse study has no unlearning trajectory (eval_every), no sequential steps and "
                                 "no QA-only forget views (forgetlab.data.muse.check_study)")
            forget_rows = examples
        else:
            split_rows, retain_rows = rows(params["split"]), rows(params["retain_split"])
            files = [qa_file(params["split"]), qa_file(params["retain_split"])]
            forget_rows = split_rows  # what this job unlearns: the split, or a sequential step's chunk of it
            if params.get("sequential_step"):
                forget_rows = forget_chunk(split_rows, params["sequential_step"], params["sequential_chunks"],
                                           params["seed_data"])
            examples = forget_examples(tokenizer, forget_rows, method.forget_views, seed, cfg.max_length,
                                       split_rows + retain_rows)
            retain_examples = [encode_qa(tokenizer, r["question"], r["answer"], cfg.max_length) for r in retain_rows]

        forget = loader(examples, seed)
        retain = loader(retain_examples, seed + 1) if method.uses_retain else None
        steps = num_steps(cfg, len(forget))
        # the hooks' own batches (e.g. a saliency mask) come from separate loaders: training order is untouched
        ctx = TrainContext(total_steps=steps, forget=loader([e["forget"] for e in examples], seed + 2),
                           retain=loader(retain_examples, seed + 3))
        hooks = [method, *method.plugins]
        ckpt = Checkpointer.for_stage(out, params, mlrun, cfg.checkpoint_every,
                                      inputs=[target, *files, *([reference] if reference != Path(target) else [])])
        trajectory = None
        if eval_every:
            # measured on the whole forget split (a sequential step shows the earlier chunks too) and seeded
            # subsets of the utility splits, as large as the forget split unless unlearn.trajectory_rows says
            n = trajectory_rows or len(split_rows)

            def subset(rows_: list[dict]) -> list[dict]:
                return random.Random(seed).sample(rows_, min(len(rows_), n))

            utility = {s: subset(rows(s)) for s in ("real_authors", "world_facts") if qa_file(s).exists()}
            trajectory = Trajectory(tokenizer, split_rows, subset(retain_rows), eval_every, steps, ckpt.log,
                                    as_saved=method.as_saved, utility_rows=utility)
            hooks.append(trajectory)
        model = train(model, method.loss, paired(forget, retain), steps, cfg, hooks=hooks,
                      log=ckpt.log, desc=f"unlearn {params['method']} ({spec['name']})", context=ctx,
                      checkpoint=ckpt, precision=params.get("precision", "auto"),
                      strategy=distributed.strategy(params))
        mlrun.log_metrics({"unlearn_steps": steps, **method.summary(),
                           **{k: v for p in method.plugins for k, v in p.summary().items()}})
        save_model(model, tokenizer, tmp)
        if trajectory is not None:
            trajectory.table().to_csv(tmp / "trajectory.csv", index=False)
            trajectory.sample_table().to_parquet(tmp / "trajectory_samples.parquet", index=False)
            mlrun.log_artifact(tmp / "trajectory.csv")
        write_json(tmp / "forgetlab_stage.json", {**params, "start_model": str(target), "reference_model": str(reference),
                                                  "forget_examples": len(forget_rows)})
    ckpt.remove()  # the output is in place: the checkpoint is no longer needed
