"""Token-level alignment metrics: projected visual tokens against the LLM's input word embeddings.

The sequence-level ones (modality gap, Recall@K) are pure tensor functions used by training code too, and
live in vlalign.losses.retrieval.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlalign.losses.retrieval import check_embeddings


def _cosines(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> torch.Tensor:
    check_embeddings(a, name_a)
    check_embeddings(b, name_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} D={a.shape[1]} and {name_b} D={b.shape[1]} differ")
    return F.normalize(a.double(), dim=-1) @ F.normalize(b.double(), dim=-1).T


def nearest_words(visual_tokens: torch.Tensor, word_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each visual token [N, D], the index of the most cosine-similar word [W, D], and that cosine.

    The word a visual token "recalls" (SEA, Fig. 1-2 and 6).
    """
    cosines = _cosines(visual_tokens, word_embeds, "visual_tokens", "word_embeds")
    best, index = cosines.max(dim=1)
    return index, best


def gap_score(visual_tokens: torch.Tensor, word_embeds: torch.Tensor) -> float:
    """D: mean over visual tokens of the cosine distance (1 - cos) to the nearest word embedding.

    Cosine rather than Euclidean: projected visual tokens and word embeddings live at very different
    norms (the diagnostics report that ratio separately), and the LLM's first RMSNorm removes the norm
    anyway. 0 means every visual token sits exactly on some word's direction.
    """
    _, best = nearest_words(visual_tokens, word_embeds)
    return float((1.0 - best).mean())


def tacs(visual_tokens: torch.Tensor, caption_tokens: torch.Tensor, top: int = 10) -> float:
    """Token alignment cosine score of one image-caption pair.

    For each visual token [Nv, D], its highest cosine with any of the caption's token embeddings [M, D];
    the mean of the `top` largest of those (all of them when Nv < top). High when some visual tokens
    sit close to words of their own caption (CG-VLM, Fig. 2's text-token to image-patch similarity).
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"tacs: top must be a positive integer, got {top!r}")
    per_visual = _cosines(visual_tokens, caption_tokens, "visual_tokens", "caption_tokens").max(dim=1).values
    return float(per_visual.topk(min(top, per_visual.shape[0])).values.mean())
