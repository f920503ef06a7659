"""X-Former's MAE branch (X-Former sec. 2.3): frozen MAE ViT + decoder, and the dual cross-attention.

1. The frozen MAE encoder sees the image with a random `mask_ratio` of its patches removed.
2. Cross-attention 1: MAE features (as queries) attend to the Q-Former output -> enriched MAE features.
3. Cross-attention 2: the Q-Former output attends to the enriched MAE features -> the final queries.
4. The enriched features go through the frozen MAE decoder, which reconstructs the masked patches; the
   prediction, the target pixels and the mask go to the `xformer` objective, which computes the loss
   (MSE on masked patches, MAE's normalised-pixel target).

Both MAE networks are frozen (no parameter of theirs trains) but differentiable, so the reconstruction
loss reaches the cross-attention and, through it, the Q-Former. When no reconstruction is asked for
(LLM alignment, evaluation, generation) the MAE sees the whole image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlalign.data.images import IMAGENET_MEAN, IMAGENET_STD
from vlalign.errors import ConfigError
from vlalign.models.query_former import AttentionBlock, FeedForward
from vlalign.models.sources import load_or_explain, parse_source


class CrossBlock(nn.Module):
    """Post-LN cross-attention + feed-forward: `states` attend to `memory` (of another width)."""

    def __init__(self, dim: int, memory_dim: int, heads: int, dropout: float = 0.1, eps: float = 1e-6):
        super().__init__()
        self.attention = AttentionBlock(dim, heads, eps, dropout, kv_dim=memory_dim)
        self.ffn = FeedForward(dim, 4 * dim, eps, dropout)

    def forward(self, states: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.attention(states, kv=memory))


def load_mae(source: str):
    """A frozen `ViTMAEForPreTraining` and its pixel statistics (mean, std, image size)."""
    # Imported here: transformers' image-processing stack takes ~1.7 s, and `vlalign train` / `info` import
    # this module to check a config before any weights load; only X-Former runs need it.
    from transformers import AutoImageProcessor, ViTMAEForPreTraining

    location = parse_source(source).location
    mae = load_or_explain(location, "MAE (ViTMAEForPreTraining)",
                          lambda: ViTMAEForPreTraining.from_pretrained(location))
    if not isinstance(mae, ViTMAEForPreTraining):
        raise ConfigError(f"MAE source {source!r} did not load as ViTMAEForPreTraining")
    try:
        processor = AutoImageProcessor.from_pretrained(location)
        mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    except (OSError, ValueError, AttributeError):
        mean, std = IMAGENET_MEAN, IMAGENET_STD  # folders without a preprocessor config
    return mae.eval().requires_grad_(False), mean, std


class MaeBranch(nn.Module):
    def __init__(self, source: str, query_dim: int, query_heads: int, mask_ratio: float,
                 tower_mean, tower_std, dropout: float = 0.1):
        super().__init__()
        self.mae, mae_mean, mae_std = load_mae(source)
        self.mask_ratio = mask_ratio
        mae_dim, mae_heads = self.mae.config.hidden_size, self.mae.config.num_attention_heads
        self.enrich = CrossBlock(mae_dim, query_dim, mae_heads, dropout)  # MAE features <- Q-Former output
        self.enhance = CrossBlock(query_dim, mae_dim, query_heads, dropout)  # Q-Former output <- enriched MAE
        # pixel_values arrive normalised for the main tower; the MAE wants its own statistics and size.
        for name, value in (("tower_mean", tower_mean), ("tower_std", tower_std), ("mae_mean", mae_mean),
                            ("mae_std", mae_std)):
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.mae]

    def _mae_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixels = pixel_values.float() * self.tower_std + self.tower_mean
        size = self.mae.config.image_size
        if pixels.shape[-2:] != (size, size):
            pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
        return (pixels - self.mae_mean) / self.mae_std

    def _encode(self, pixels: torch.Tensor, mask_ratio: float):
        """MAE encoder on a random `mask_ratio` of removed patches (0: the whole image). Not HF's embeddings
        forward: its masking reads the ratio from the model's config (0.75 for a pretrained MAE), while
        X-Former masks 0.5 and the alignment stage none; the steps are the same (positions, shuffle, keep)."""
        embeddings = self.mae.vit.embeddings
        positions = embeddings.position_embeddings
        patches = embeddings.patch_embeddings(pixels) + positions[:, 1:]
        batch, count, dim = patches.shape
        keep = count - int(count * mask_ratio)
        order = torch.argsort(torch.rand(batch, count, device=patches.device), dim=1)
        ids_restore = torch.argsort(order, dim=1)
        visible = torch.gather(patches, 1, order[:, :keep, None].expand(-1, -1, dim))
        mask = torch.ones(batch, count, device=patches.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # 1 = removed, in patch order
        states = torch.cat([(embeddings.cls_token + positions[:, :1]).expand(batch, -1, -1), visible], dim=1)
        for layer in self.mae.vit.layers:
            states = layer(states, None)
        return self.mae.vit.layernorm(states), mask, ids_restore

    def forward(self, queries: torch.Tensor, pixel_values: torch.Tensor,
                reconstruct: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(final queries [B, Q, H], auxiliary tensors): with `reconstruct`, the decoder's prediction and the
        target patches [B, N, P] and the mask [B, N] (1 = removed) that the reconstruction loss compares."""
        pixels = self._mae_pixels(pixel_values)
        ratio = self.mask_ratio if reconstruct else 0.0
        mae_features, mask, ids_restore = self._encode(pixels, ratio)
        enriched = self.enrich(mae_features.to(queries.dtype), queries)
        final_queries = self.enhance(queries, enriched)
        if not reconstruct:
            return final_queries, {}
        predicted = self.mae.decoder(enriched, ids_restore).logits
        return final_queries, {"reconstruction_predicted": predicted,
                               "reconstruction_target": self.mae.patchify(pixels), "reconstruction_mask": mask}
