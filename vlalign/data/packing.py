"""Padding-free packing: several samples per row, each attending only to itself.

A packed row holds whole samples back to back; `position_ids` restart at 0 for every sample, and that alone
tells the LLM where one sample ends: transformers builds the block-diagonal causal mask from packed position
ids when no 2D attention mask is passed (sdpa / eager), and flash-attention's varlen kernel reads the same
boundaries from them. What is left of a row after its last sample is padding, laid out as one more "sample"
(positions from 0) that nothing reads and no loss covers.

The rows are filled first-fit-decreasing (longest sample first, into the first row with room), which wastes
at most a few tokens per row for the short, varied samples of instruction data. The batch's samples are then
put in packed (row-major) order, so the n-th `<image>` run in the rows is the n-th image of the batch, as the
model's single masked_scatter expects.
"""

from __future__ import annotations

import torch

from vlalign.data.templates import IGNORE_INDEX


# Attention implementations that compute each packed sample on its own (vlalign.models.varlen_attention,
# flash-attention's varlen kernels): for them a row's length costs nothing, so a batch packs into one row.
PER_SAMPLE_ATTENTION = ("sdpa_varlen", "flash_attention_2", "flash_attention_3")


def packed_row_length(model_config) -> int | None:
    """Rows of at most model.max_length tokens where attention runs over whole rows (sdpa, eager: T^2 per row,
    so a shorter row is cheaper); one row per batch (None) where it runs per sample."""
    return None if model_config.attn_implementation in PER_SAMPLE_ATTENTION else model_config.max_length


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sample indices grouped into rows of at most `capacity` tokens, longest first into the first row with
    room; rows in the order they were opened, samples in the order they were placed."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # stable: ties keep batch order
        length = lengths[index]
        if length > capacity:
            raise ValueError(f"a sample of {length} tokens does not fit a packed row of {capacity}")
        row = next((r for r, left in enumerate(room) if left >= length), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(index)
        room[row] -= length
    return rows


def packed_tensors(sequences: list[tuple[list[int], list[int]]], rows: list[list[int]], pad_token_id: int,
                   pad_to_multiple_of: int) -> dict[str, torch.Tensor]:
    """(input_ids, labels) per sample + the packing -> input_ids, labels, attention_mask, position_ids [R, T],
    and per sample (in packed order) its row and start column.

    The label at each sample's first position becomes IGNORE_INDEX: in a padded row position 0 is never a
    target, but in a packed row it would be the target of the previous sample's last token.
    """
    widest = max((sum(len(sequences[i][0]) for i in row) for row in rows), default=0)
    width = -(-widest // pad_to_multiple_of) * pad_to_multiple_of if widest else 0
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    sample_rows, sample_starts = [], []
    for r, row in enumerate(rows):
        start = 0
        for index in row:
            ids, targets = sequences[index]
            n = len(ids)
            input_ids[r, start:start + n] = torch.tensor(ids)
            labels[r, start:start + n] = torch.tensor(targets)
            labels[r, start] = IGNORE_INDEX
            attention_mask[r, start:start + n] = 1
            position_ids[r, start:start + n] = torch.arange(n)
            sample_rows.append(r)
            sample_starts.append(start)
            start += n
        position_ids[r, start:] = torch.arange(width - start)  # the padding tail: a segment of its own
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
            "position_ids": position_ids, "sample_rows": torch.tensor(sample_rows, dtype=torch.long),
            "sample_starts": torch.tensor(sample_starts, dtype=torch.long)}


def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """[R, T] packed position ids -> [R, T] index of the segment (sample or padding tail) of each token within
    its row: a new segment starts wherever the position does not continue the previous one by 1. The same
    rule transformers applies (masking_utils.find_packed_sequence_indices)."""
    previous = torch.cat([position_ids[:, :1] - 1, position_ids[:, :-1]], dim=1)
    return (position_ids - previous != 1).long().cumsum(dim=1)
