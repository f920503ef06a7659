"""Which word does each patch look like? The raw similarities; accuracy against ground truth is the caller's.

Used as a sanity metric for patch-level alignment (SEA labels patches with exactly this comparison): on
the coloured-shapes images, a patch covered by a red object should be closest to "red" among colour words.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlalign.dual_encoder.base import DualEncoder


@torch.no_grad()
def patch_word_similarity(dual_encoder: DualEncoder, pixel_values: torch.Tensor, words: list[str],
                          template: str = "{}") -> torch.Tensor:
    """Cosine similarity of every patch to every word: [B, 3, H, W] pixels -> [B, P, W], patches row-major.

    `template` wraps each word before encoding ("a photo of a {}." as CLIP zero-shot prompts); the default
    encodes the bare word.
    """
    if isinstance(words, str) or not words:
        raise ValueError(f"words must be a non-empty list of strings, got {words!r}")
    if "{}" not in template:
        raise ValueError(f"template {template!r} has no '{{}}' to put the word in")
    patches = F.normalize(dual_encoder.encode_patches(pixel_values).float(), dim=-1)  # [B, P, D]
    texts = F.normalize(dual_encoder.encode_texts([template.format(word) for word in words]).float(), dim=-1)
    return patches @ texts.T
