"""soup: the fan-in of `model_soup`, a uniform average of K fine-tuned ingredients."""

from __future__ import annotations

import shutil
from pathlib import Path

from safetensors.torch import save_file

from forgetlab.model import atomic_dir, check_checkpoint
from forgetlab.recipes import write_json
from forgetlab.soup import average_checkpoints
from forgetlab.tracking import stage_run


def run(params: dict, ingredients: list[Path], out: Path) -> None:
    with stage_run(params, out) as mlrun, atomic_dir(out) as tmp:
        for d in ingredients:
            check_checkpoint(d)
        for f in Path(ingredients[0]).iterdir():  # config and tokenizer of the first ingredient
            if f.is_file() and f.suffix != ".safetensors" and f.name != "forgetlab_stage.json":
                shutil.copy(f, tmp / f.name)
        save_file(average_checkpoints(ingredients), tmp / "model.safetensors", metadata={"format": "pt"})
        write_json(tmp / "forgetlab_stage.json", {**params, "ingredients": [str(d) for d in ingredients]})
        mlrun.log_metrics({"soup_ingredients": len(ingredients)})
