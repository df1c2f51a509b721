"""pretrain: a small Llama trained from scratch on the world's biographies.

With `model.init_from: <dir>` the pretraining is skipped: the local safetensors checkpoint (and
its tokenizer) is loaded and re-saved as this stage's output, so later stages are unchanged.
The study's prompt format (`model.prompt_format`) is recorded in the output's tokenizer config,
where every later stage reads it (forgetlab.qa.set_prompt_format).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from forgetlab import distributed
from forgetlab.checkpoint import Checkpointer
from forgetlab.losses import lm_loss
from forgetlab.model import (atomic_dir, attention, check_checkpoint, checkpointing, device, load_model, load_tokenizer,
                             new_llama, save_model)
from forgetlab.qa import encode_text, prompt_spec, set_prompt_format
from forgetlab.recipes import read_jsonl, set_threads, write_json
from forgetlab.tracking import stage_run
from forgetlab.train import Loader, TrainConfig, num_steps, seed_everything, train


def run(params: dict, data_dir: Path, out: Path) -> None:
    set_threads(params)
    seed_everything(params["seed"])
    init_from = params["model"].get("init_from")
    ckpt = None
    with stage_run(params, out) as mlrun, atomic_dir(out) as tmp:
        if init_from:
            check_checkpoint(init_from)
            model, tokenizer = load_model(init_from, **attention(params)), load_tokenizer(init_from)
            mlrun.log_metrics({"pretrain_steps": 0})
        else:
            tokenizer = load_tokenizer(data_dir / "tokenizer")
            model = checkpointing(new_llama(params["model"], tokenizer).to(device()), params)
            cfg = TrainConfig(**params["train"])
            corpus = [encode_text(tokenizer, row["text"], cfg.max_length) for row in read_jsonl(data_dir / "corpus.jsonl")]
            loader = Loader(corpus, cfg.batch_size, tokenizer.pad_token_id, params["seed"], device(),
                            group_by_length=cfg.group_by_length, megabatch=cfg.length_megabatch)
            steps = num_steps(cfg, len(loader))
            ckpt = Checkpointer.for_stage(out, params, mlrun, cfg.checkpoint_every,
                                          inputs=[data_dir / "corpus.jsonl", data_dir / "tokenizer"])
            model = train(model, partial(lm_loss, supervised_logits=cfg.supervised_logits), iter(loader), steps, cfg,
                          log=ckpt.log, desc="pretrain", checkpoint=ckpt, precision=params.get("precision", "auto"),
                          strategy=distributed.strategy(params))
            mlrun.log_metrics({"pretrain_steps": steps, "n_parameters": sum(p.numel() for p in model.parameters())})
        set_prompt_format(tokenizer, prompt_spec(params["model"]))
        save_model(model, tokenizer, tmp)
        write_json(tmp / "forgetlab_stage.json", params)
    if ckpt is not None:
        ckpt.remove()  # the output is in place: the checkpoint is no longer needed
