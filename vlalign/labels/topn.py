"""SEA's offline labelling rule (Eqs. 4-6): each patch keeps its top-n words by cosine, negatives dropped.

Pure tensors; the labeller (vlalign.dual_encoder.labeller) runs it over every image, the label cache stores it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SIMILARITY_BLOCK = 1 << 24  # patch x word similarities computed per block: bounds memory for 64K-word lists


def label_patches(patch_embeds: torch.Tensor, word_embeds: torch.Tensor, top_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-n words per patch by cosine similarity (SEA Eqs. 4-6).

    patch_embeds [P, D], word_embeds [W, D], unnormalised -> (indices [P, top_n] int64, scores [P, top_n]
    float32), sorted descending per patch. Similarities below 0 are not labels: index -1, score 0 (so are
    the slots beyond W when the list has fewer than top_n words).
    """
    if patch_embeds.dim() != 2 or word_embeds.dim() != 2 or patch_embeds.shape[1] != word_embeds.shape[1]:
        raise ValueError(f"label_patches: patch_embeds {tuple(patch_embeds.shape)} and word_embeds "
                         f"{tuple(word_embeds.shape)} must be [P, D] and [W, D] with the same D")
    if word_embeds.shape[0] == 0:
        raise ValueError("label_patches: the word list is empty")
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
        raise ValueError(f"label_patches: top_n must be an integer >= 1, got {top_n!r}")
    words = F.normalize(word_embeds.float(), dim=-1)
    keep = min(top_n, words.shape[0])
    rows = max(1, SIMILARITY_BLOCK // words.shape[0])
    scores, indices = [], []
    for start in range(0, patch_embeds.shape[0], rows):
        similarity = F.normalize(patch_embeds[start:start + rows].float(), dim=-1) @ words.T
        block_scores, block_indices = similarity.topk(keep, dim=1)  # sorted, largest first
        scores.append(block_scores)
        indices.append(block_indices)
    scores = torch.cat(scores) if scores else words.new_zeros((0, keep))
    indices = torch.cat(indices) if indices else torch.zeros((0, keep), dtype=torch.long, device=words.device)
    negative = scores < 0
    indices = indices.masked_fill(negative, -1)
    scores = scores.masked_fill(negative, 0.0)
    if keep < top_n:
        indices = F.pad(indices, (0, top_n - keep), value=-1)
        scores = F.pad(scores, (0, top_n - keep), value=0.0)
    return indices.long(), scores
