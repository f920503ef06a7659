"""Cross-process helpers for contrastive losses: negatives from the global batch, not the local shard.

Every contrastive term (EOS InfoNCE, CG-VLM, SEA, Q-Former ITC) gathers its embeddings from all ranks so
that each rank scores its positives against every rank's negatives, as CLIP and LAVIS' BLIP-2 do. The
local shard keeps its gradient; the other ranks' rows are constants here (each rank back-propagates its
own rows, and DDP averages the parameter gradients), which gives the same parameter gradient as one big
batch up to the 1/world_size factor DDP applies anyway.

Ranks may hold different numbers of rows (the last batch, text-only records, SEA's per-label
deduplication): sizes are exchanged first and rows padded to the largest, then trimmed.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """[n_local, ...] on every rank -> ([n_total, ...] in rank order, offset of this rank's rows).

    The rows of this rank carry gradient; the others do not. Single process: the tensor itself, offset 0.
    """
    if world_size() == 1:
        return tensor, 0
    sizes = _gather_sizes(tensor.shape[0], tensor.device)
    largest = max(sizes)
    padded = tensor.new_zeros((largest, *tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor.detach()
    slots = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(slots, padded.contiguous())
    own = rank()
    parts = [tensor if r == own else slots[r][:size] for r, size in enumerate(sizes)]
    return torch.cat(parts), sum(sizes[:own])


def gather_objects(values: list) -> list:
    """A Python list from every rank, concatenated in rank order (labels, ids: no gradient)."""
    if world_size() == 1:
        return list(values)
    everything = [None] * world_size()
    dist.all_gather_object(everything, list(values))
    return [value for part in everything for value in part]


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    local = torch.tensor([n], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(sizes, local)
    return [int(size) for size in sizes]
