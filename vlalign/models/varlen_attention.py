"""`model.attn_implementation: sdpa_varlen`: attention that computes each packed sample on its own.

With packed rows (vlalign.data.packing) transformers' `sdpa` path is correct but computes the whole row: it
builds a block-diagonal mask and multiplies every query with every key of the row, T^2 per row instead of the
sum of each sample's length^2, and with a mask PyTorch cannot use its causal kernels. Flash-attention's varlen
kernel avoids that on GPUs where it is installed; this is the same idea with PyTorch's own SDPA, for CPUs and
GPUs without flash-attn: per row, the segments are read from the restarting position ids and each runs
`scaled_dot_product_attention(is_causal=True)` alone.

Everything that is not a packed training pass (padded batches, generation with a KV cache) goes to
transformers' own sdpa function unchanged, with transformers' own mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "sdpa_varlen"


def _segments(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row, (start, stop) of each run of consecutive positions."""
    restarts = position_ids[:, 1:] != position_ids[:, :-1] + 1
    out = []
    width = position_ids.shape[1]
    for row in restarts.cpu().tolist():
        starts = [0, *(t + 1 for t, restart in enumerate(row) if restart)]
        out.append(list(zip(starts, [*starts[1:], width])))
    return out


def varlen_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                          is_causal=None, **kwargs):
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    packed = (position_ids is not None and query.shape[2] == key.shape[2] and position_ids.dim() == 2
              and position_ids.shape[-1] == query.shape[2] and bool((position_ids[:, 1:] != position_ids[:, :-1] + 1).any()))
    if not packed or not getattr(module, "is_causal", True):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    position_ids = position_ids.expand(query.shape[0], -1)
    attend = _matmul_attention if query.device.type == "cpu" and torch.is_autocast_enabled("cpu") else _sdpa
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    rows = []
    for row, segments in enumerate(_segments(position_ids)):
        parts = [attend(query[row:row + 1, :, start:stop], key[row:row + 1, :, start:stop],
                        value[row:row + 1, :, start:stop], scale, dropout)
                 for start, stop in segments]
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


def _sdpa(query, key, value, scale: float, dropout: float) -> torch.Tensor:
    return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scale,
                                          is_causal=query.shape[2] > 1)


def _matmul_attention(query, key, value, scale: float, dropout: float) -> torch.Tensor:
    """Causal attention as two matmuls in the autocast dtype and a float32 softmax (transformers' eager
    attention under autocast). On CPUs under bf16 autocast this is 1.6-2.8x faster, forward + backward, than
    PyTorch's flash-attention CPU kernel at the lengths of captions and instructions (80-300 tokens, measured
    here); in float32 the kernel is faster, and it is used."""
    dtype = torch.get_autocast_dtype("cpu")
    length = query.shape[2]
    scores = torch.matmul(query.to(dtype), key.to(dtype).transpose(-1, -2)).float() * scale
    future = torch.ones(length, length, dtype=torch.bool, device=query.device).triu(1)
    weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    weights = F.dropout(weights, p=dropout, training=dropout > 0)
    return torch.matmul(weights.to(dtype), value.to(dtype))


def register() -> None:
    """Make `sdpa_varlen` a name transformers' models accept as attn_implementation (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, varlen_sdpa_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
