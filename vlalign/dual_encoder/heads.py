"""The trainable part of the packaged dual encoder: two projection heads and a learnable temperature.

LiT-style ("Locked-image Tuning", Zhai et al. 2022): both towers stay frozen, so everything learnt lives
here and works on cached tower outputs as well as on live ones.

Choices, and why:
  * The image head runs on every cell of the 7x7 feature map, and the image embedding is the mean of the
    per-cell outputs. Patches and whole images then live in the same space (mean of patch embeddings ==
    image embedding, exactly), which the patch-level word probe and SEA-style patch labelling rely on.
    Pooling before the head would train a space that single cells were never mapped into.
  * LayerNorm then Linear by default: EfficientNet's ReLU6 features and MiniLM's unit-length sentence
    vectors have very different scales, and LayerNorm puts both on one footing. A linear image head keeps
    a cell's embedding a linear read-out of that cell alone, so what a patch "says" is not blurred by a
    nonlinearity that was only ever trained through a 49-cell average. `hidden_dim > 0` adds a GELU
    hidden layer to both heads for data that needs it.
  * Temperature as in CLIP: a learnable log-scale initialised at log(1/0.07), the scale capped at 100.
"""

from __future__ import annotations

import math

import torch
from torch import nn

INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = 100.0


def projection_head(in_dim: int, out_dim: int, hidden_dim: int = 0) -> nn.Sequential:
    if hidden_dim <= 0:
        return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim))
    return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden_dim), nn.GELU(),
                         nn.Linear(hidden_dim, out_dim))


class ProjectionHeads(nn.Module):
    def __init__(self, image_dim: int, text_dim: int, embed_dim: int = 256, hidden_dim: int = 0):
        super().__init__()
        self.image_dim, self.text_dim, self.embed_dim, self.hidden_dim = image_dim, text_dim, embed_dim, hidden_dim
        self.image_head = projection_head(image_dim, embed_dim, hidden_dim)
        self.text_head = projection_head(text_dim, embed_dim, hidden_dim)
        self.log_logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))

    def logit_scale(self) -> torch.Tensor:
        # clamp in the forward too, so a loaded or hand-edited parameter can never exceed the cap
        return self.log_logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    def clamp_logit_scale_(self) -> None:
        """After each optimizer step (as OpenCLIP): keeps the parameter where its gradient is alive."""
        with torch.no_grad():
            self.log_logit_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))

    def project_cells(self, image_features: torch.Tensor) -> torch.Tensor:
        """[B, P, image_dim] feature-map cells -> [B, P, embed_dim] patch embeddings."""
        if image_features.dim() != 3 or image_features.shape[-1] != self.image_dim:
            raise ValueError(f"image features must be [B, P, {self.image_dim}], got {tuple(image_features.shape)}")
        return self.image_head(image_features)

    def project_images(self, image_features: torch.Tensor) -> torch.Tensor:
        """[B, P, image_dim] -> [B, embed_dim]: the mean of the patch embeddings."""
        return self.project_cells(image_features).mean(dim=1)

    def project_texts(self, text_features: torch.Tensor) -> torch.Tensor:
        """[B, text_dim] sentence vectors -> [B, embed_dim]."""
        if text_features.dim() != 2 or text_features.shape[-1] != self.text_dim:
            raise ValueError(f"text features must be [B, {self.text_dim}], got {tuple(text_features.shape)}")
        return self.text_head(text_features)
