"""A paired contrastive term with its learnable temperature, over the global batch.

Binds `functional.info_nce` / `functional.sigmoid_contrastive` to a learnable scale (and SigLIP bias)
and to the cross-rank gather, so each objective only says which two embeddings form a pair.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from vlalign.distributed import gather_rows
from vlalign.errors import ConfigError
from vlalign.losses.functional import info_nce, sigmoid_contrastive
from vlalign.objectives.temperature import LogitScale, SigmoidScale

LossKind = Literal["infonce", "sigmoid"]


class PairLoss(nn.Module):
    def __init__(self, kind: LossKind = "infonce", temperature: float = 0.07, max_logit_scale: float = 100.0,
                 sigmoid_init_scale: float = 10.0, sigmoid_init_bias: float = -10.0):
        super().__init__()
        if kind not in ("infonce", "sigmoid"):
            raise ConfigError(f"contrastive loss must be 'infonce' or 'sigmoid', got {kind!r}")
        self.kind = kind
        if kind == "infonce":
            self.scale = LogitScale(temperature, max_scale=max_logit_scale)
        else:
            self.scale = SigmoidScale(sigmoid_init_scale, sigmoid_init_bias, max_scale=max_logit_scale)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """a, b: [n_local, D] pairs on this rank -> (loss over the global batch, logged values)."""
        a_all, _ = gather_rows(a.float())
        b_all, _ = gather_rows(b.float())
        if self.kind == "infonce":
            scale = self.scale()
            loss = info_nce(a_all, b_all, scale)
            return loss, {"logit_scale": float(scale.detach()), "pairs": float(a_all.shape[0])}
        scale, bias = self.scale()
        loss = sigmoid_contrastive(a_all, b_all, scale, bias)
        return loss, {"logit_scale": float(scale.detach()), "logit_bias": float(bias.detach()), "pairs": float(a_all.shape[0])}
