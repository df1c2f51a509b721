"""`dropout`: attention, residual and embedding dropout on a Llama-style decoder.

Mechanism (Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
Overfitting", JMLR 2014): during training each unit is zeroed with probability p and the
survivors are scaled by 1/(1-p), so E[dropout(h)] = h.
- attention: p_attn on the attention probabilities (softmax(QK^T/sqrt(d))) of every layer;
- residual:  h <- h + dropout(f(h)) for each attention and MLP branch f (as in GPT-2/"Attention is all you need");
- embedding: dropout on the token embeddings.
Hooks are removed at the end, so the saved model carries no dropout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F

from forgetlab.regularizers import REGULARIZERS, Regularizer, base_model


def _dropout_output(p: float):
    def hook(module, inputs, output):
        if isinstance(output, tuple):
            return (F.dropout(output[0], p, module.training),) + tuple(output[1:])
        return F.dropout(output, p, module.training)

    return hook


@REGULARIZERS.register("dropout")
@dataclass
class Dropout(Regularizer):
    attention: float = 0.1
    residual: float = 0.1
    embedding: float = 0.0
    _handles: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self):
        for name in ("attention", "residual", "embedding"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"dropout.{name} must be in [0, 1), got {getattr(self, name)}")

    def setup(self, model, ctx=None):
        base = base_model(model)
        for layer in base.model.layers:
            layer.self_attn.attention_dropout = self.attention
            if self.residual > 0:
                self._handles.append(layer.self_attn.register_forward_hook(_dropout_output(self.residual)))
                self._handles.append(layer.mlp.register_forward_hook(_dropout_output(self.residual)))
        if self.embedding > 0:
            self._handles.append(base.model.embed_tokens.register_forward_hook(_dropout_output(self.embedding)))
        return model

    def finalize(self, model):
        base = base_model(model)
        for layer in base.model.layers:
            layer.self_attn.attention_dropout = 0.0
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return model
