"""Learnable similarity scales for the contrastive terms (CLIP's temperature, SigLIP's scale and bias).

The parameter is log(1/tau), as in CLIP, so the optimiser works on a scale-free quantity and the scale
stays positive. CLIP clamps the multiplier at 100 (tau >= 0.01): without it the logits of a small
batch can be pushed apart until the softmax saturates and gradients vanish. The clamp here is applied
in the forward pass (`clamp` keeps gradients at zero above the bound, so the optimiser stops pushing),
and `clamp_` can also be called after a step to keep the stored value in range, as open_clip does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vlalign.errors import ConfigError


class LogitScale(nn.Module):
    """logit_scale = exp(log_scale), clamped to [min_scale, max_scale]; init 1 / init_temperature."""

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0, min_scale: float = 1.0,
                 learnable: bool = True):
        super().__init__()
        if not 0.0 < init_temperature:
            raise ConfigError(f"temperature must be > 0, got {init_temperature}")
        if not 0.0 < min_scale <= 1.0 / init_temperature <= max_scale:
            raise ConfigError(f"1/temperature = {1.0 / init_temperature:.3g} must lie in "
                              f"[min_scale={min_scale}, max_scale={max_scale}]")
        self.max_log = math.log(max_scale)
        self.min_log = math.log(min_scale)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)), requires_grad=learnable)

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(self.min_log, self.max_log).exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        self.log_scale.clamp_(self.min_log, self.max_log)


class SigmoidScale(nn.Module):
    """SigLIP's learnable (scale, bias): init t' = log 10 and b = -10, as in the SigLIP paper."""

    def __init__(self, init_scale: float = 10.0, init_bias: float = -10.0, max_scale: float = 100.0):
        super().__init__()
        self.scale = LogitScale(1.0 / init_scale, max_scale=max_scale)
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale(), self.bias
