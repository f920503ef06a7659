"""Two exact speed-ups of a training step that change no result's distribution or value.

- LoRA's dropout through `torch.rand_like(x) >= p` instead of `bernoulli_`: the same keep probability and
  scale per element (a different random stream), 1.6x faster on CPUs, where drawing the masks of every
  adapter's input was ~20% of a stage-2 step (x [tokens, d] per adapter, 7 adapters x 30 layers).
- Frozen linear weights of the LLM and the tower stored in the autocast dtype: autocast casts a float32 weight
  to bf16 for every matmul of every step (a copy of the whole model per step, ~10% of a stage-1 step on this
  CPU); stored in bf16 they give bit-identical matmuls. Embeddings (and a head tied to them), norms and
  anything trainable keep float32.
"""

from __future__ import annotations

import torch
from torch import nn


class RandDropout(nn.Dropout):
    """nn.Dropout with the mask drawn by `rand_like(x) >= p` (keep probability 1 - p, kept values / (1 - p))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p >= 1.0:
            return x * 0.0
        return x * ((torch.rand_like(x) >= self.p) * (1.0 / (1.0 - self.p)))


def use_rand_dropout(module: nn.Module) -> int:
    """Replace peft's LoRA dropout modules under `module` by RandDropout; returns how many."""
    replaced = 0
    for owner in module.modules():
        table = getattr(owner, "lora_dropout", None)
        if isinstance(table, nn.ModuleDict):
            for name, dropout in table.items():
                if type(dropout) is nn.Dropout:
                    table[name] = RandDropout(dropout.p)
                    replaced += 1
    return replaced


def store_frozen_linears_in(model, dtype: torch.dtype) -> int:
    """Frozen nn.Linear weights and biases of the LLM and the vision tower cast to `dtype` (the autocast dtype)
    in place; a weight shared with an embedding (tied LM head) is left alone. Returns the parameters cast.
    The connector is never touched: checkpoints save it whole, in float32."""
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    cast = 0
    for component in (model.language_model, model.vision_tower):
        for module in component.modules():
            if not isinstance(module, nn.Linear):
                continue
            for param in (module.weight, module.bias):
                if param is None or param.requires_grad or id(param) in embedding_weights or param.dtype == dtype:
                    continue
                param.data = param.data.to(dtype)
                cast += 1
    return cast
