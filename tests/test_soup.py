"""A regularizer entry's `soup` option: ingredient settings and the uniform average of the fan-in."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from forgetlab.model import load_model
from forgetlab.recipes import soup
from forgetlab.recipes.finetune import ingredient_settings
from forgetlab.soup import Soup, average_checkpoints


def test_ingredients_vary_seed_or_lr():
    params = {"seed": 2, "train": {"lr": 1e-3, "epochs": 1, "batch_size": 4}, "ingredient": 1, "soup": {"k": 3, "vary": "seed"}}
    assert ingredient_settings(params) == (2001, params["train"])  # seed * 1000 + i
    lr_params = {**params, "soup": {"k": 2, "vary": "lr", "lr_factors": [0.5, 2.0]}}
    seed, cfg = ingredient_settings(lr_params)
    assert (seed, cfg["lr"]) == (2, 2e-3)
    assert ingredient_settings({**lr_params, "ingredient": None}) == (2, params["train"])  # the fan-in's own params


@pytest.mark.parametrize("spec, message", [
    ({"k": 1}, "soup.k"),
    ({"vary": "data"}, "soup.vary"),
    ({"k": 3, "vary": "lr", "lr_factors": [1.0, 2.0]}, "soup.lr_factors"),
])
def test_bad_soup_is_rejected(spec, message):
    with pytest.raises(ValueError, match=message):
        Soup(**spec)


def test_ingredient_outside_the_soup_is_rejected():
    with pytest.raises(ValueError, match="outside 0..1"):
        Soup(k=2).ingredient(2, 0, 1e-3)


def test_average_is_uniform_by_hand(tmp_path):
    for i, (a, b) in enumerate([([1.0, 2.0], [0.0]), ([3.0, 6.0], [3.0]), ([5.0, 1.0], [6.0])]):
        (tmp_path / str(i)).mkdir()
        save_file({"a": torch.tensor(a), "b": torch.tensor(b)}, tmp_path / str(i) / "model.safetensors")
    avg = average_checkpoints([tmp_path / str(i) for i in range(3)])
    assert torch.equal(avg["a"], torch.tensor([3.0, 3.0])) and torch.equal(avg["b"], torch.tensor([3.0]))


def test_soup_recipe_writes_the_averaged_model(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, tmp_path / "i0")
    shutil.copytree(tiny_model_dir, tmp_path / "i1")
    weights = load_file(tmp_path / "i1" / "model.safetensors")
    save_file({k: v + 1.0 for k, v in weights.items()}, tmp_path / "i1" / "model.safetensors", metadata={"format": "pt"})
    soup.run({"study": "t", "stage": "finetune", "role": "target"}, [tmp_path / "i0", tmp_path / "i1"], tmp_path / "soup")
    souped = load_file(tmp_path / "soup" / "model.safetensors")
    assert all(torch.allclose(souped[k], weights[k] + 0.5) for k in weights)
    assert load_model(tmp_path / "soup") is not None
