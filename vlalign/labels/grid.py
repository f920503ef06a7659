"""Mapping patch labels from the labeller's grid onto the VLM's visual-token grid.

The dual encoder that labels patches and the VLM's tower + connector need not cut the image alike:
  * same grid (the demo: the dual encoder's 7x7 final EfficientNet map, the VLM's 14x14 stage-3 map pooled
    2x2 by the connector -> 7x7): identity;
  * finer labels, coarser tokens (CLIP-L/336 labels on 24x24 patches, a connector that pools 2x2 -> 12x12):
    the labels of the f x f label cells under one token are merged, each word scored by its mean score
    over those cells (a word missing from a cell counts 0 there), and the best top_n kept. Edge windows
    follow the connector's ceil-mode pooling (a 15x15 grid pooled by 2 gives 8x8 tokens, the last row and
    column of windows covering one label cell each), so the same f x f cells the connector averages give
    the token its labels;
  * coarser labels, finer tokens (tokens = f x labels in both directions): each token takes the labels of
    the label cell it lies in.
Anything else has no faithful mapping and is an error naming both grids. Both sides must also see the same
pixels (same image size handling): the cache records its `image_aspect` and the objective checks it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vlalign.errors import ConfigError

Grid = tuple[int, int]


def grid_mapping(label_grid: Grid, token_grid: Grid) -> tuple[str, int]:
    """('same', 1) | ('pool', f) | ('repeat', f); ConfigError when the grids do not correspond."""
    (lr, lc), (tr, tc) = tuple(label_grid), tuple(token_grid)
    if (lr, lc) == (tr, tc):
        return "same", 1
    factor = math.ceil(lr / tr)
    if lr > tr and factor == math.ceil(lc / tc) and math.ceil(lr / factor) == tr and math.ceil(lc / factor) == tc:
        return "pool", factor
    if tr % lr == 0 and tc % lc == 0 and tr // lr == tc // lc:
        return "repeat", tr // lr
    raise ConfigError(f"label grid {lr}x{lc} does not map onto the visual-token grid {tr}x{tc}: the token grid "
                      f"must equal the label grid, be it pooled f x f (ceil mode, as the connector pools), or be "
                      f"f times finer in both directions. Label with a dual encoder whose patch grid fits, or "
                      f"change the connector's pooling")


def merge_candidates(indices: torch.Tensor, scores: torch.Tensor, top_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, K] candidate (word, score) pairs per row, words repeating -> [M, top_n] with scores summed per word,
    sorted descending; -1 / 0 where a row has fewer than top_n distinct words. Vectorised segment sums."""
    words, order = indices.sort(dim=1)
    values = scores.gather(1, order).masked_fill(words < 0, 0.0)
    change = words[:, 1:] != words[:, :-1]
    first = torch.cat([torch.ones_like(words[:, :1], dtype=torch.bool), change], dim=1)
    last = torch.cat([change, torch.ones_like(words[:, :1], dtype=torch.bool)], dim=1)
    positions = torch.arange(words.shape[1], device=words.device).expand_as(words)
    start = torch.where(first, positions, torch.zeros_like(positions)).cummax(dim=1).values
    running = values.cumsum(dim=1)
    segment = running - running.gather(1, start) + values.gather(1, start)  # sum of the word's run, at its end
    totals = torch.where(last & (words >= 0), segment, torch.full_like(segment, -math.inf))
    keep = min(top_n, words.shape[1])
    best, where = totals.topk(keep, dim=1)
    merged = words.gather(1, where).masked_fill(best == -math.inf, -1)
    best = best.masked_fill(best == -math.inf, 0.0)
    if keep < top_n:
        merged = F.pad(merged, (0, top_n - keep), value=-1)
        best = F.pad(best, (0, top_n - keep), value=0.0)
    return merged, best


def map_labels(indices: torch.Tensor, scores: torch.Tensor, label_grid: Grid, token_grid: Grid,
               image_key: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[I, Lr*Lc, n] labels of I images -> [I, Tr*Tc, n] labels of the visual tokens (see the module doc)."""
    (lr, lc), (tr, tc) = tuple(label_grid), tuple(token_grid)
    if indices.shape[1] != lr * lc:
        where = f"image {image_key!r}: " if image_key else ""
        raise ConfigError(f"{where}{indices.shape[1]} labelled patches, but the label grid {lr}x{lc} has {lr * lc}")
    try:
        kind, factor = grid_mapping(label_grid, token_grid)
    except ConfigError as exc:
        raise ConfigError(f"image {image_key!r}: {exc}" if image_key else str(exc)) from None
    if kind == "same":
        return indices, scores
    images, _, top_n = indices.shape
    if kind == "repeat":
        grid_indices = indices.reshape(images, lr, lc, top_n).repeat_interleave(factor, 1).repeat_interleave(factor, 2)
        grid_scores = scores.reshape(images, lr, lc, top_n).repeat_interleave(factor, 1).repeat_interleave(factor, 2)
        return grid_indices.reshape(images, tr * tc, top_n), grid_scores.reshape(images, tr * tc, top_n)
    pad_rows, pad_cols = tr * factor - lr, tc * factor - lc
    grid_indices = F.pad(indices.reshape(images, lr, lc, top_n).permute(0, 3, 1, 2), (0, pad_cols, 0, pad_rows), value=-1)
    grid_scores = F.pad(scores.reshape(images, lr, lc, top_n).permute(0, 3, 1, 2), (0, pad_cols, 0, pad_rows), value=0.0)

    def windows(tensor):  # [I, n, Tr*f, Tc*f] -> [I * Tr * Tc, f * f * n]
        tensor = tensor.reshape(images, top_n, tr, factor, tc, factor).permute(0, 2, 4, 3, 5, 1)
        return tensor.reshape(images * tr * tc, factor * factor * top_n)

    merged, summed = merge_candidates(windows(grid_indices), windows(grid_scores), top_n)
    # mean over the label cells that really lie under the token (edge windows of a ceil-mode pooling hold fewer)
    covered = F.avg_pool2d(torch.ones(1, 1, lr, lc), factor, factor, ceil_mode=True, count_include_pad=False,
                           divisor_override=1).reshape(1, tr * tc, 1)
    mean = (summed.reshape(images, tr * tc, top_n) / covered.to(summed.device))
    return merged.reshape(images, tr * tc, top_n), mean
