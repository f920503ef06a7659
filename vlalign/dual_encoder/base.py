"""The dual-encoder interface: what the SEA labeller, the word probe and the demo need from a CLIP-like model.

Two implementations: `PackagedDualEncoder` (frozen EfficientNet-Lite0 + MiniLM towers with small trained
heads, offline) and `HFDualEncoder` (a Hugging Face CLIPModel / SiglipModel, for real use).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from vlalign.data.images import ImageTransform


class DualEncoder(ABC):
    """Images and texts in one embedding space, plus a per-patch view of the image side.

    Embeddings are returned unnormalised (as CLIP's get_*_features); compare them by cosine.
    `encode_patches` applies the image side's final head to every patch / feature-map cell, so a patch
    embedding can be compared with text embeddings directly (patch-level labelling, word probes).
    """

    embed_dim: int
    image_transform: ImageTransform

    @property
    @abstractmethod
    def patch_grid(self) -> tuple[int, int]:
        """(rows, cols) of the patches `encode_patches` returns, row-major."""

    @property
    @abstractmethod
    def logit_scale(self) -> torch.Tensor:
        """The similarity multiplier 1/tau, already exponentiated (0-d tensor)."""

    @abstractmethod
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] pixels (prepared by `image_transform`) -> [B, D]."""

    @abstractmethod
    def encode_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, rows * cols, D], patches in row-major order."""

    @abstractmethod
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """list of B strings -> [B, D]."""
