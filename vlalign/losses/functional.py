"""The contrastive losses of the seed papers as pure functions: tensors in, a scalar tensor out.

No modules, no config, no learnable state: the objective classes own the temperature parameters and the
batch plumbing and call these. Every `logit_scale` is the multiplier 1/tau, already exponentiated (a
float or a 0-d tensor, so a learnable log-scale stays differentiable through it).

All similarities are cosines (rows L2-normalised here), computed in float32 even for half-precision
inputs: softmax cross-entropy over a batch of bf16 logits loses the small differences that matter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Scale = float | torch.Tensor


def _as_scalar(value: Scale, name: str) -> Scale:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a float or a 0-d tensor, got a tensor of shape {tuple(value.shape)}")
        return value.reshape(()).float()
    return float(value)


def _check_rank(tensor: torch.Tensor, rank: int, name: str, layout: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a tensor {layout}, got {type(tensor).__name__}")
    if tensor.dim() != rank:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(tensor.shape)}")


def _check_batch(size: int, names: str) -> None:
    if size == 0:
        raise ValueError(f"{names}: empty batch (N = 0); a contrastive loss needs at least one pair")


def _unit(tensor: torch.Tensor) -> torch.Tensor:
    return F.normalize(tensor.float(), dim=-1)


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, D] x [M, D] -> [N, M] cosines."""
    return _unit(a) @ _unit(b).T


def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: Scale) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP): pair i of `a` matches pair i of `b`; every other row is a negative.

    logits = logit_scale * cos(a_i, b_j); loss = (CE(logits, i) + CE(logits.T, i)) / 2.
    """
    _check_rank(a, 2, "a", "[N, D]")
    _check_rank(b, 2, "b", "[N, D]")
    if a.shape != b.shape:
        raise ValueError(f"info_nce: a {tuple(a.shape)} and b {tuple(b.shape)} must have the same [N, D]")
    _check_batch(a.shape[0], "info_nce")
    logits = _as_scalar(logit_scale, "logit_scale") * cosine_matrix(a, b)
    targets = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def sigmoid_contrastive(a: torch.Tensor, b: torch.Tensor, logit_scale: Scale, logit_bias: Scale) -> torch.Tensor:
    """SigLIP pairwise sigmoid loss: every (i, j) is an independent binary match / no-match decision.

    logits_ij = logit_scale * cos(a_i, b_j) + logit_bias; z_ij = +1 on the diagonal, -1 elsewhere;
    loss = -sum_ij log sigmoid(z_ij * logits_ij) / N (SigLIP normalises by the batch size, not N^2).
    """
    _check_rank(a, 2, "a", "[N, D]")
    _check_rank(b, 2, "b", "[N, D]")
    if a.shape != b.shape:
        raise ValueError(f"sigmoid_contrastive: a {tuple(a.shape)} and b {tuple(b.shape)} must have the same [N, D]")
    _check_batch(a.shape[0], "sigmoid_contrastive")
    n = a.shape[0]
    logits = (_as_scalar(logit_scale, "logit_scale") * cosine_matrix(a, b)
              + _as_scalar(logit_bias, "logit_bias"))
    signs = 2 * torch.eye(n, device=a.device) - 1
    return -F.logsigmoid(signs * logits).sum() / n


def cg_contrastive(visual_tokens: torch.Tensor, text_embeds: torch.Tensor, text_mask: torch.Tensor,
                   logit_scale: Scale) -> torch.Tensor:
    """CG-VLM (Eq. 3-4): mean-pooled visual tokens vs each caption's token embeddings.

    s[i, j] = logit_scale * mean over valid tokens m of caption j of cos(pool(visual_tokens[i]), text_embeds[j, m]);
    loss = CE(s, arange(B)) averaged over B (image -> caption direction only, as in the paper).
    Shapes: visual_tokens [B, Nv, D], text_embeds [B, M, D], text_mask [B, M] (True = real token).
    """
    _check_rank(visual_tokens, 3, "visual_tokens", "[B, Nv, D]")
    _check_rank(text_embeds, 3, "text_embeds", "[B, M, D]")
    _check_rank(text_mask, 2, "text_mask", "[B, M]")
    batch = visual_tokens.shape[0]
    if text_embeds.shape[0] != batch or text_embeds.shape[-1] != visual_tokens.shape[-1]:
        raise ValueError(f"cg_contrastive: visual_tokens {tuple(visual_tokens.shape)} and text_embeds "
                         f"{tuple(text_embeds.shape)} must share B and D")
    if tuple(text_mask.shape) != tuple(text_embeds.shape[:2]):
        raise ValueError(f"cg_contrastive: text_mask {tuple(text_mask.shape)} must be [B, M] = "
                         f"{tuple(text_embeds.shape[:2])}")
    _check_batch(batch, "cg_contrastive")
    if visual_tokens.shape[1] == 0:
        raise ValueError("cg_contrastive: visual_tokens has no tokens (Nv = 0)")
    valid = text_mask.bool()
    counts = valid.sum(dim=1)
    if (counts == 0).any():
        empty = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"cg_contrastive: caption(s) {empty} have no valid token in text_mask; "
                         f"their mean similarity is undefined")
    pooled = _unit(visual_tokens.float().mean(dim=1))  # [B, D]
    # Zero padded positions before anything touches them: they may hold anything (even NaN), which would
    # otherwise reach the gradient of the visual side through the einsum even if masked afterwards.
    text_tokens = text_embeds.float().masked_fill(~valid.unsqueeze(-1), 0.0)
    cosines = torch.einsum("id,jmd->ijm", pooled, _unit(text_tokens))  # [B, B, M]; padded positions are 0
    scores = _as_scalar(logit_scale, "logit_scale") * cosines.sum(dim=-1) / counts.unsqueeze(0)
    return F.cross_entropy(scores, torch.arange(batch, device=scores.device))


def qformer_itc(query_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: Scale,
                label_smoothing: float = 0.0) -> torch.Tensor:
    """BLIP-2 / X-Former image-text contrastive loss: the best-matching query stands for the image.

    sim[i, j] = logit_scale * max_q cos(query_embeds[i, q], text_embeds[j]);
    loss = (CE(sim, arange) + CE(sim.T, arange)) / 2, both with `label_smoothing`.
    Shapes: query_embeds [B, Q, D], text_embeds [B, D].
    """
    _check_rank(query_embeds, 3, "query_embeds", "[B, Q, D]")
    _check_rank(text_embeds, 2, "text_embeds", "[B, D]")
    batch = query_embeds.shape[0]
    if text_embeds.shape[0] != batch or text_embeds.shape[1] != query_embeds.shape[-1]:
        raise ValueError(f"qformer_itc: query_embeds {tuple(query_embeds.shape)} and text_embeds "
                         f"{tuple(text_embeds.shape)} must share B and D")
    _check_batch(batch, "qformer_itc")
    if query_embeds.shape[1] == 0:
        raise ValueError("qformer_itc: query_embeds has no queries (Q = 0)")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"qformer_itc: label_smoothing must be in [0, 1), got {label_smoothing}")
    sim = _as_scalar(logit_scale, "logit_scale") * qformer_similarity(query_embeds, text_embeds)
    targets = torch.arange(batch, device=sim.device)
    return (F.cross_entropy(sim, targets, label_smoothing=label_smoothing)
            + F.cross_entropy(sim.T, targets, label_smoothing=label_smoothing)) / 2


def qformer_similarity(query_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """[N, Q, D] x [M, D] -> [N, M]: for each image-text pair, the best cosine over the image's queries."""
    return torch.einsum("iqd,jd->ijq", _unit(query_embeds), _unit(text_embeds)).max(dim=-1).values


def hard_negative_weights(similarity: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Row-wise probabilities of drawing each column as row i's hard negative: softmax(similarity[i]) over
    the columns that are not a positive of i (`same[i, j]` True: the diagonal, duplicate captions). Callers
    pass logits, i.e. cosine x logit scale, as BLIP-2 samples from softmax(sim / temp). A row with no
    negative at all is an error naming it."""
    _check_rank(similarity, 2, "similarity", "[N, M]")
    if same.shape != similarity.shape:
        raise ValueError(f"sample_hard_negatives: same {tuple(same.shape)} must match similarity "
                         f"{tuple(similarity.shape)}")
    without_negative = same.all(dim=1)
    if without_negative.any():
        rows = without_negative.nonzero().flatten().tolist()
        raise ValueError(f"sample_hard_negatives: rows {rows} have no negative (every candidate is a positive)")
    weights = torch.softmax(similarity.detach().float().masked_fill(same, float("-inf")), dim=1)
    # Rows whose softmax mass on negatives underflowed (NaN from all -inf cannot happen: each row has one)
    # fall back to uniform over the negatives.
    finite = torch.isfinite(weights).all(dim=1, keepdim=True) & (weights.sum(dim=1, keepdim=True) > 0)
    return torch.where(finite, weights, (~same).float() / (~same).float().sum(dim=1, keepdim=True))


def sample_hard_negatives(similarity: torch.Tensor, same: torch.Tensor,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """For each row i, one column j drawn with probability `hard_negative_weights` (BLIP-2's ITM
    hard-negative mining)."""
    return torch.multinomial(hard_negative_weights(similarity, same), 1, generator=generator).flatten()


def masked_patch_mse(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                     normalize_target: bool = True) -> torch.Tensor:
    """MAE's reconstruction loss: per-patch MSE averaged over the masked patches only.

    predicted, target [B, N, P] (P = patch pixels), mask [B, N] with 1 where the patch was masked.
    normalize_target: MAE's norm_pix_loss, each target patch standardised by its own mean and variance.
    """
    _check_rank(predicted, 3, "predicted", "[B, N, P]")
    if target.shape != predicted.shape or mask.shape != predicted.shape[:2]:
        raise ValueError(f"masked_patch_mse: predicted {tuple(predicted.shape)}, target {tuple(target.shape)} "
                         f"and mask {tuple(mask.shape)} must agree")
    if not mask.any():
        raise ValueError("masked_patch_mse: no patch is masked, so there is nothing to reconstruct")
    if normalize_target:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = ((predicted.float() - target.float()) ** 2).mean(dim=-1)
    mask = mask.float()
    return (per_patch * mask).sum() / mask.sum()
