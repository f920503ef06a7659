"""Retrieval metrics on paired embeddings: how far apart the modalities sit, and whether pairs find each other.

Both take plain [N, D] tensors (any encoder, any dtype) and return Python numbers, so they serve reports,
tests and the diagnostics alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def check_embeddings(tensor: torch.Tensor, name: str) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name} must be a [N, D] tensor, got {shape}")
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} is empty (N = 0)")


def modality_gap(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> float:
    """Euclidean distance between the centroids of the L2-normalised image and text embeddings.

    Liang et al. 2022 ("Mind the Gap"): contrastive encoders leave the two modalities in separate cones;
    0 means the centroids coincide, 2 is the maximum (opposite directions). The sets need not be paired.
    """
    check_embeddings(image_embeds, "image_embeds")
    check_embeddings(text_embeds, "text_embeds")
    if image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(f"image_embeds D={image_embeds.shape[1]} and text_embeds D={text_embeds.shape[1]} differ")
    image_centre = F.normalize(image_embeds.double(), dim=-1).mean(dim=0)
    text_centre = F.normalize(text_embeds.double(), dim=-1).mean(dim=0)
    return float(torch.linalg.vector_norm(image_centre - text_centre))


def _hit_rates(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Per row: the probability that the diagonal entry is in the top k, ties broken at random.

    With g scores strictly above the positive and t others equal to it, the positive lands uniformly on one
    of the ranks g .. g + t, so P(rank < k) = clamp(k - g, 0, t + 1) / (t + 1). Counting ties this way keeps a
    collapsed encoder (all scores equal) at chance instead of a perfect score, and splits the credit fairly
    between duplicate captions.
    """
    positive = scores.diagonal().unsqueeze(1)
    # float64 cosines: a tolerance far below any real difference, far above rounding noise
    above = (scores > positive + 1e-9).sum(dim=1)
    tied = ((scores - positive).abs() <= 1e-9).sum(dim=1) - 1  # minus the positive itself
    return (k - above).clamp(min=0).minimum(tied + 1).double() / (tied + 1)


def retrieval_recall(image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                     ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Recall@K both ways for paired sets (image i belongs with text i), cosine similarity.

    Returns {"i2t@K": fraction of images whose own text is among their K nearest texts, "t2i@K": the
    reverse} for each K, each in [0, 1]. Chance level is K / N.
    """
    check_embeddings(image_embeds, "image_embeds")
    check_embeddings(text_embeds, "text_embeds")
    n = image_embeds.shape[0]
    if text_embeds.shape[0] != n:
        raise ValueError(f"retrieval_recall needs paired sets: {n} images but {text_embeds.shape[0]} texts")
    if image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(f"image_embeds D={image_embeds.shape[1]} and text_embeds D={text_embeds.shape[1]} differ")
    ks = tuple(ks)
    if not ks:
        raise ValueError("retrieval_recall: ks is empty; give at least one K")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
            raise ValueError(f"retrieval_recall: K={k!r} must be an integer in 1..{n} (the number of pairs)")
    image_to_text = F.normalize(image_embeds.double(), dim=-1) @ F.normalize(text_embeds.double(), dim=-1).T
    return recall_from_similarity(image_to_text, ks)


def recall_from_similarity(image_to_text: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Recall@K both ways from a paired [N, N] image-text similarity (row i's own text is column i), for
    models whose similarity is not one cosine (the Q-Former's best query)."""
    n = image_to_text.shape[0]
    if image_to_text.ndim != 2 or image_to_text.shape[1] != n:
        raise ValueError(f"recall_from_similarity needs a square [N, N] matrix, got {tuple(image_to_text.shape)}")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
            raise ValueError(f"retrieval_recall: K={k!r} must be an integer in 1..{n} (the number of pairs)")
    recalls = {}
    for k in ks:
        recalls[f"i2t@{k}"] = float(_hit_rates(image_to_text, k).mean())
        recalls[f"t2i@{k}"] = float(_hit_rates(image_to_text.T, k).mean())
    return recalls
