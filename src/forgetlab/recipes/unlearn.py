"""unlearn: start from a regularizer's target and minimise one unlearning method's loss over
(forget, retain) batches of a split. A frozen reference (the target itself) is loaded once
when the method needs it."""

from __future__ import annotations

from pathlib import Path

from forgetlab.model import atomic_dir, device, load_model, load_tokenizer, save_model
from forgetlab.qa import encode_qa
from forgetlab.recipes import read_jsonl, set_threads, write_json
from forgetlab.tracking import stage_run
from forgetlab.train import Loader, TrainConfig, num_steps, paired, seed_everything, train
from forgetlab.unlearning import build_method


def run(params: dict, target: Path, data_dir: Path, out: Path) -> None:
    set_threads(params)
    seed_everything(params["seed"])
    with stage_run(params, out) as mlrun, atomic_dir(out) as tmp:
        tokenizer = load_tokenizer(target)
        model = load_model(target)
        method = build_method(params["method_spec"])
        if method.needs_reference:
            method.reference = load_model(target).eval().requires_grad_(False)
        cfg = TrainConfig(**params["train"])

        def loader(split: str, seed: int) -> Loader:
            rows = read_jsonl(data_dir / "qa" / f"{split}.jsonl")
            examples = [encode_qa(tokenizer, r["question"], r["answer"], cfg.max_length) for r in rows]
            return Loader(examples, cfg.batch_size, tokenizer.pad_token_id, seed, device())

        forget = loader(params["split"], params["seed"])
        retain = loader(params["retain_split"], params["seed"] + 1) if method.uses_retain else None
        steps = num_steps(cfg, len(forget))
        model = train(model, method.loss, paired(forget, retain), steps, cfg, log=mlrun.log_step,
                      desc=f"unlearn {params['method']}")
        mlrun.log_metrics({"unlearn_steps": steps})
        save_model(model, tokenizer, tmp)
        write_json(tmp / "forgetlab_stage.json", params)
