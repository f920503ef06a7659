"""Cross-process helpers for contrastive losses: negatives from the global batch, not the local shard.

Every contrastive term (EOS InfoNCE, CG-VLM, SEA, Q-Former ITC) gathers its embeddings from all ranks so
that each rank scores its positives against every rank's negatives, as CLIP and LAVIS' BLIP-2 do. The
local shard keeps its gradient; the other ranks' rows are constants here (each rank back-propagates its
own rows, and DDP averages the parameter gradients), which gives the same parameter gradient as one big
batch up to the 1/world_size factor DDP applies anyway.

Ranks may hold different numbers of rows (the last batch, text-only records, SEA's per-label
deduplication): sizes are exchanged first and rows padded to the largest, then trimmed.

Tensors handed to a collective outlive it for a moment: the backend's worker thread (gloo's run loop, NCCL's
watchdog) drops its reference only after the caller has seen the result. If Python has dropped the tensor by
then, that thread frees the tensor's Python object and needs the GIL for it; when the interpreter is already
shutting down, CPython ends the thread with pthread_exit and the C++ runtime aborts the process ("terminate
called without an active exception", SIGABRT) after a run that went well. So every tensor these helpers hand
to a collective is tracked, and `quiesce()` (called before a training process exits) waits until the backend
has let go of all of them.
"""

from __future__ import annotations

import pickle
import time
import warnings
import weakref

import torch
import torch.distributed as dist

_handed_over: list[weakref.ref] = []  # tensors given to collectives that the backend may still hold


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
    dist.all_gather(slots, padded)
    _track(padded, *slots)
    own = rank()
    parts = [tensor if r == own else slots[r][:size] for r, size in enumerate(sizes)]
    return torch.cat(parts), sum(sizes[:own])


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for a row and hands it to the row's owner."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
        padded[:tensor.shape[0]] = tensor
        slots = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(slots, padded)
        _track(padded, *slots)
        ctx.offset, ctx.size = sum(sizes[:rank()]), tensor.shape[0]
        return torch.cat([slot[:size] for slot, size in zip(slots, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        _track(total)
        return total[ctx.offset:ctx.offset + ctx.size].clone(), None


def gather_rows_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """As gather_rows, but every rank's rows carry gradient back to the rank that owns them (LAVIS'
    all_gather_with_grad, which BLIP-2's ITM uses for negative images drawn from other ranks).

    The backward pass is a collective: every rank must make its loss depend on the result (a `* 0` term where
    nothing else does), or the ranks that do wait forever."""
    if world_size() == 1:
        return tensor, 0
    sizes = _gather_sizes(tensor.shape[0], tensor.device)
    return _GatherWithGrad.apply(tensor, sizes), sum(sizes[:rank()])


def gather_objects(values: list) -> list:
    """A Python list from every rank, concatenated in rank order (labels, ids, counters: no gradient)."""
    if world_size() == 1:
        return list(values)
    # As dist.all_gather_object, but with tensors of our own, so that quiesce() can wait for them.
    device = _collective_device()
    local = torch.frombuffer(bytearray(pickle.dumps(list(values))), dtype=torch.uint8)
    sizes = _gather_sizes(local.numel(), device)
    padded = torch.zeros(max(sizes), dtype=torch.uint8, device=device)
    padded[:local.numel()] = local.to(device)
    slots = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(slots, padded)
    _track(padded, *slots)
    parts = [pickle.loads(slot[:size].cpu().numpy().tobytes()) for slot, size in zip(slots, sizes)]
    return [value for part in parts for value in part]


def mean_over_ranks(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Element-wise mean of a list of floats over all ranks (logged metrics)."""
    if world_size() == 1:
        return list(values)
    total = torch.tensor(values, dtype=torch.float32, device=device)
    dist.all_reduce(total)
    _track(total)
    return (total / world_size()).tolist()


def quiesce(timeout: float = 60.0) -> None:
    """Wait until the backend has let go of every tensor these helpers handed to a collective.

    Call it after the last collective of a process that is about to exit (see the module docstring). The wait
    sleeps, so the worker threads get the GIL they need to free the tensors."""
    deadline = time.monotonic() + timeout
    while _prune():
        if time.monotonic() > deadline:
            warnings.warn(f"vlalign.distributed.quiesce: {len(_handed_over)} tensors still held by the "
                          f"process-group backend after {timeout:.0f} s", RuntimeWarning, stacklevel=2)
            return
        time.sleep(0.001)


def _track(*tensors: torch.Tensor) -> None:
    """Tensors just used in a collective, which the caller drops (never returns) right after."""
    _prune()
    _handed_over.extend(weakref.ref(tensor) for tensor in tensors)


def _prune() -> int:
    _handed_over[:] = [ref for ref in _handed_over if ref() is not None]
    return len(_handed_over)


def _collective_device() -> torch.device:
    """Where object gathers place their bytes: NCCL only moves CUDA tensors."""
    if "nccl" in str(dist.get_backend()) and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    local = torch.tensor([n], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(sizes, local)
    _track(local, *sizes)
    return [int(size) for size in sizes]
