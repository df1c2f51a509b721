"""Fine-tuning regularizers: the study's independent variable.

A regularizer is a dataclass registered by name; its fields are its config parameters, checked
(with `__post_init__` for ranges, and `check` for combinations) before any job runs. A study
entry is a list of them, applied together (e.g. dropout + z_loss); target and oracle always use
the same entry. Each may override any of the hooks below; the training loop (forgetlab.train)
and the loss (forgetlab.losses.lm_loss) call them, and are the same for all regularizers.
Adding one is one new file in this package plus a config entry.

A regularizer is a training-loop hook (the contract: forgetlab.hooks) with two more, called by
the loss (forgetlab.losses.lm_loss):
    compute_loss(batch, outputs, model)    replace the cross-entropy (at most one per entry;
                                           set replaces_loss = True)
    extra_loss(batch, outputs, model)      a term added to the loss (logged under the name)
A term on the supervised positions reads their logits with forgetlab.losses.logits_at_supervised
(with the train setting `supervised_logits` the outputs have no full `logits`).
"""

from __future__ import annotations

from typing import ClassVar

from forgetlab.hooks import Hooks
from forgetlab.registry import ComponentError, Registry, build, import_all

REGULARIZERS = Registry("regularizer")


class Regularizer(Hooks):
    name: ClassVar[str] = ""
    needs_hidden_states: ClassVar[bool] = False  # forward with output_hidden_states=True
    replaces_loss: ClassVar[bool] = False
    # hooks run in this order within an entry (stable otherwise): e.g. swa (-1) loads its average
    # before sparsity (1) re-applies its masks and before lora (2) merges its adapters
    order: ClassVar[int] = 0

    def compute_loss(self, batch: dict, outputs, model):
        return None

    def extra_loss(self, batch: dict, outputs, model):
        return None

    def check(self, others: list["Regularizer"]) -> None:
        """Raise ValueError if this regularizer cannot be combined with the others of its entry."""


def build_regularizers(specs: list[dict]) -> list[Regularizer]:
    """An entry's regularizers (forgetlab.registry.build), in hook order, checked to combine."""
    regs = []
    for i, spec in enumerate(specs):
        try:
            regs.append(build(REGULARIZERS, spec))
        except ComponentError as e:
            raise e.inside(f"[{i}]") from None
    regs.sort(key=lambda r: r.order)
    replacing = [r.name for r in regs if r.replaces_loss]
    if len(replacing) > 1:
        raise ValueError(f"{' and '.join(replacing)} both replace the loss and cannot be combined")
    for reg in regs:
        reg.check([o for o in regs if o is not reg])
    return regs


def base_model(model):
    """The underlying transformers model, also when wrapped by peft."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


import_all(__name__, __path__)
