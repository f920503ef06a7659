"""Next-token prediction on the supervised tokens (the LLaVA baseline; Ak et al. Eq. 2, CG-VLM Eq. 2/6)."""

from __future__ import annotations

import torch.nn.functional as F

from vlalign.data.templates import IGNORE_INDEX
from vlalign.objectives.base import Objective, Terms, register_objective


def next_token_loss(output, labels):
    """Mean cross-entropy over supervised tokens; logits only where a target exists (no [B, T, V] tensor)."""
    targets = labels[:, 1:]
    positions = targets != IGNORE_INDEX
    if not positions.any():
        raise ValueError("batch has no supervised tokens")
    shifted = output.hidden_states.new_zeros(labels.shape, dtype=bool)
    shifted[:, :-1] = positions
    logits = output.logits_at(shifted)
    return F.cross_entropy(logits.float(), targets[positions])


@register_objective("generative")
class Generative(Objective):
    def forward(self, output, batch, model) -> Terms:
        return Terms({self.name: next_token_loss(output, batch.labels)})
