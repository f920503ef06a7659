"""The offline dual encoder: frozen EfficientNet-Lite0 and MiniLM towers, trained projection heads.

Both towers ship in PyPI packages, so this runs with no model hub. The towers never train and always stay
in eval mode (EfficientNet's BatchNorm statistics must not move); only `ProjectionHeads` learns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer

from vlalign.data.images import ImageTransform
from vlalign.dual_encoder.base import DualEncoder
from vlalign.dual_encoder.heads import ProjectionHeads
from vlalign.models.sources import load_or_explain, parse_source
from vlalign.models.vision import VisionTower, load_vision_tower

DEFAULT_VISION_SOURCE = "efficientnet-lite0"
DEFAULT_TEXT_SOURCE = "minilm-l6"


class SentenceTower(nn.Module):
    """A BERT-style encoder used the way sentence-transformers runs all-MiniLM-L6-v2: mean over the real
    (non-padding) tokens, then L2-normalise (that model's own modules.json: Transformer, Pooling(mean),
    Normalize). Its sentence vectors are what the model was trained to make comparable."""

    def __init__(self, source: str = DEFAULT_TEXT_SOURCE, max_length: int = 256):
        super().__init__()
        location = parse_source(source).location
        self.source = source
        self.max_length = max_length  # all-MiniLM-L6-v2's sentence_bert_config max_seq_length
        self.tokenizer = load_or_explain(location, "text tower", lambda: AutoTokenizer.from_pretrained(location))
        self.model = load_or_explain(location, "text tower", lambda: AutoModel.from_pretrained(location)).eval()
        self.hidden_size = self.model.config.hidden_size

    @torch.no_grad()
    def forward(self, texts: list[str]) -> torch.Tensor:
        if isinstance(texts, str) or not texts:
            raise ValueError(f"texts must be a non-empty list of strings, got {texts!r}")
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.model.device)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled.float(), dim=-1)


def load_frozen_image_tower(source: str = DEFAULT_VISION_SOURCE) -> VisionTower:
    tower = load_vision_tower(source)
    if tower.num_prefix_tokens:
        raise ValueError(f"vision tower {source!r} returns {tower.num_prefix_tokens} non-grid tokens; the "
                         f"packaged dual encoder needs a pure feature map (a CNN or patch-only tower)")
    # channels-last runs EfficientNet's depthwise convolutions ~1.5x faster on CPU (measured, 2 cores)
    tower.model.to(memory_format=torch.channels_last)
    return tower.requires_grad_(False).eval()


class PackagedDualEncoder(nn.Module, DualEncoder):
    def __init__(self, heads: ProjectionHeads, vision_tower: VisionTower, text_tower: SentenceTower,
                 image_aspect: str = "pad"):
        super().__init__()
        if heads.image_dim != vision_tower.hidden_size or heads.text_dim != text_tower.hidden_size:
            raise ValueError(f"heads expect image features of {heads.image_dim} and text features of "
                             f"{heads.text_dim}; the towers give {vision_tower.hidden_size} and "
                             f"{text_tower.hidden_size}")
        self.vision_tower = vision_tower.requires_grad_(False).eval()
        self.text_tower = text_tower.requires_grad_(False).eval()
        self.heads = heads
        self.embed_dim = heads.embed_dim
        self.image_transform = ImageTransform(vision_tower.image_size, vision_tower.image_mean,
                                              vision_tower.image_std, image_aspect)

    @classmethod
    def build(cls, vision_source: str = DEFAULT_VISION_SOURCE, text_source: str = DEFAULT_TEXT_SOURCE,
              embed_dim: int = 256, hidden_dim: int = 0) -> "PackagedDualEncoder":
        """Towers loaded from their sources, heads freshly initialised (seed torch first)."""
        vision_tower, text_tower = load_frozen_image_tower(vision_source), SentenceTower(text_source)
        heads = ProjectionHeads(vision_tower.hidden_size, text_tower.hidden_size, embed_dim, hidden_dim)
        return cls(heads, vision_tower, text_tower)

    def train(self, mode: bool = True) -> "PackagedDualEncoder":
        super().train(mode)
        self.vision_tower.eval()  # frozen towers stay in eval mode whatever the heads do
        self.text_tower.eval()
        return self

    @property
    def patch_grid(self) -> tuple[int, int]:
        return tuple(self.vision_tower.grid)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.heads.logit_scale()

    @torch.no_grad()
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen tower output: [B, 3, S, S] -> [B, rows * cols, C] feature-map cells, row-major."""
        size = self.vision_tower.image_size
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3 or tuple(pixel_values.shape[2:]) != (size, size):
            raise ValueError(f"pixel_values must be [B, 3, {size}, {size}] (prepared by image_transform), "
                             f"got {tuple(pixel_values.shape)}")
        return self.vision_tower(pixel_values.contiguous(memory_format=torch.channels_last)).float()

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Frozen tower output: B strings -> [B, text_dim] unit sentence vectors."""
        return self.text_tower(texts)

    def encode_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.heads.project_cells(self.image_features(pixel_values))

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.heads.project_images(self.image_features(pixel_values))

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.heads.project_texts(self.text_features(texts))
