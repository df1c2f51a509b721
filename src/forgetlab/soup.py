"""The `soup` option of a regularizer entry: a uniform model soup of K fine-tunes.

    theta_soup = (1/K) * sum_{i=1..K} theta_i,   theta_i = finetune(theta_pretrained; seed_i or lr_i)

(Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves accuracy
without increasing inference time", ICML 2022.) Not a regularizer: training is untouched. The
workflow fine-tunes K ingredients (ordinary fine-tune jobs, each with the entry's regularizers)
and a fan-in job averages them (`forgetlab soup`). Ingredient i differs from the others by its
seed (`vary: seed`: seed*1000 + i) or by its learning rate (`vary: lr`: lr * lr_factors[i]).
Deliberate difference: the paper sweeps hyper-parameters and also builds greedy soups; here the
soup is uniform.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Soup:
    k: int = 3
    vary: str = "seed"
    lr_factors: list = field(default_factory=lambda: [0.5, 1.0, 2.0])

    def __post_init__(self):
        if not isinstance(self.k, int) or self.k < 2:
            raise ValueError(f"soup.k must be an integer >= 2, got {self.k!r}")
        if self.vary not in ("seed", "lr"):
            raise ValueError(f"soup.vary must be 'seed' or 'lr', got {self.vary!r}")
        if self.vary == "lr" and (len(self.lr_factors) != self.k or min(self.lr_factors) <= 0):
            raise ValueError(f"soup.lr_factors must hold k={self.k} positive factors, got {self.lr_factors}")

    def ingredient(self, i: int, seed: int, lr: float) -> tuple[int, float]:
        """The (seed, lr) of ingredient i of the soup for a study seed and the configured lr."""
        if not 0 <= i < self.k:
            raise ValueError(f"soup ingredient {i} is outside 0..{self.k - 1}")
        if self.vary == "seed":
            return seed * 1000 + i, lr
        return seed, lr * self.lr_factors[i]


def average_checkpoints(dirs: list[Path]) -> dict:
    """Uniform average of the safetensors weights of several checkpoints with the same keys."""
    from safetensors.torch import load_file

    first = load_file(Path(dirs[0]) / "model.safetensors")
    total = {k: v.double() for k, v in first.items()}
    for d in dirs[1:]:
        weights = load_file(Path(d) / "model.safetensors")
        if weights.keys() != total.keys():
            raise ValueError(f"{d} does not have the same tensors as {dirs[0]}; cannot average")
        for k, v in weights.items():
            total[k] += v.double()
    return {k: (v / len(dirs)).to(first[k].dtype) for k, v in total.items()}
