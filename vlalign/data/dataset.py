"""Dataset, collation and length-grouped batching.

Records are validated up front (cheap checks: JSON, turns, tags, image files exist); templating and
image decoding happen per item, so a 665K-record set starts in seconds. A bad item under the `skip`
policy becomes a `Skipped` marker that the collator counts into the batch, which is how the counts
survive DataLoader worker processes and reach the end-of-run report.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch.utils.data import Dataset

from vlalign.data.feature_store import VisionFeatureSource
from vlalign.data.images import ImageTransform, load_image
from vlalign.data.llava_json import Record, SkipReport
from vlalign.data.packing import first_fit_decreasing, packed_tensors, segment_ids
from vlalign.data.samples import SAMPLE_FIELDS, FieldContext, LayoutContext, resolve_layout
from vlalign.data.templates import IGNORE_INDEX
from vlalign.data.token_drop import drop_visual_placeholders, kept_count, kept_visual_tokens
from vlalign.errors import DataError


@dataclass
class Sample:
    record_id: str
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None
    truncated: bool
    fields: dict[str, Any] = field(default_factory=dict)  # the per-sample fields the objectives asked for
    vision_features: torch.Tensor | None = None  # [tokens, C] the frozen tower's cached output, instead of pixels
    visual_keep: list[int] | None = None  # train.visual_token_drop: which visual tokens the placeholders stand for

    @property
    def has_image(self) -> bool:
        return self.pixel_values is not None or self.vision_features is not None


@dataclass
class Skipped:
    error: DataError


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T], IGNORE_INDEX where not supervised
    pixel_values: torch.Tensor | None  # [num_images, 3, H, W], in sample order
    has_image: torch.Tensor  # [B] bool
    record_ids: list[str]
    skips: SkipReport = field(default_factory=SkipReport)
    truncated: int = 0
    # Declared per-sample fields (vlalign.data.samples), by name: a [B] tensor or a list of B values.
    extras: dict[str, Any] = field(default_factory=dict)
    # Where each sample sits: row [B] and first column [B]. Padded batches: sample i is row i from column 0.
    # Packed batches (vlalign.data.packing) hold several samples per row and carry `position_ids` [R, T],
    # which restart at 0 for every sample; None when padded.
    sample_rows: torch.Tensor | None = None
    sample_starts: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    # The tower's cached output [num_images, tokens, C] (data.cache_vision_features), in place of pixel_values.
    vision_features: torch.Tensor | None = None
    # train.visual_token_drop: per image, the indices [num_images, kept] of the visual tokens its placeholders hold.
    visual_keep: torch.Tensor | None = None

    def __post_init__(self):
        if self.sample_rows is None:
            self.sample_rows = torch.arange(len(self.record_ids), device=self.input_ids.device)
            self.sample_starts = torch.zeros_like(self.sample_rows)

    def __len__(self) -> int:
        return len(self.record_ids)

    def to(self, device) -> "Batch":
        """Every tensor, the extras included, on `device`; everything else as it is (accelerate's loaders call
        this to put each batch on the training device)."""
        def move(value):
            return value.to(device) if isinstance(value, torch.Tensor) else value

        moved = {f.name: move(getattr(self, f.name)) for f in fields(self) if f.name != "extras"}
        return Batch(**moved, extras={name: move(value) for name, value in self.extras.items()})

    @property
    def packed(self) -> bool:
        return self.position_ids is not None

    def at_sample_positions(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample token positions [B] (counted from each sample's first token) -> (rows, columns) [B]."""
        positions = positions.to(self.sample_rows.device)
        return self.sample_rows, self.sample_starts + positions

    def token_samples(self) -> torch.Tensor:
        """[R, T] the batch index of the sample each token belongs to; -1 on padding."""
        owner = torch.full(self.input_ids.shape, -1, dtype=torch.long, device=self.input_ids.device)
        places = zip(self.sample_rows.tolist(), self.sample_starts.tolist())
        if self.packed:
            segments = segment_ids(self.position_ids)
            for sample, (row, start) in enumerate(places):
                owner[row][segments[row] == segments[row, start]] = sample
        else:
            lengths = self.attention_mask.sum(dim=1).tolist()
            for sample, (row, start) in enumerate(places):
                owner[row, start:start + lengths[row]] = sample
        return owner


class LlavaDataset(Dataset):
    """`fields`: the per-sample fields the objectives need ({name: options}); they also choose the layout."""

    def __init__(self, records: list[Record], tokenizer, transform: ImageTransform, *, fmt: str,
                 image_token_id: int, num_visual_tokens: int, max_length: int, on_error: str = "raise",
                 system_prompt: str | None = None, chat_template: str | None = None,
                 fields: dict[str, dict] | None = None):
        self.records = records
        self.tokenizer = tokenizer
        self.transform = transform
        self.fmt = fmt
        self.image_token_id = image_token_id
        self.num_visual_tokens = num_visual_tokens
        self.max_length = max_length
        self.on_error = on_error
        self.fields = dict(fields or {})
        self.layout, self.layout_options = resolve_layout(fmt, self.fields)
        self.context = LayoutContext(tokenizer, image_token_id, num_visual_tokens, max_length, system_prompt,
                                     chat_template)
        # Set by the training loop when configured: cached tower features instead of pixels
        # (vlalign.data.feature_store), and the visual-token drop (share, seed; vlalign.data.token_drop).
        self.feature_source: VisionFeatureSource | None = None
        self.token_drop: tuple[float, int] | None = None
        self.epoch = 0  # the drop draws anew each epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def estimated_lengths(self) -> list[int]:
        """Token-count estimates for length grouping (~4 characters per token), without tokenizing."""
        visual = kept_count(self.num_visual_tokens, self.token_drop[0]) if self.token_drop else self.num_visual_tokens
        return [(visual if r.image is not None else 0) + r.text_length // 4 + 8 for r in self.records]

    def __getitem__(self, index: int) -> Sample | Skipped:
        record = self.records[index]
        try:
            return self._build(record, index)
        except DataError as error:
            if self.on_error == "skip":
                return Skipped(error)
            raise

    def _build(self, record: Record, index: int) -> Sample:
        tokens = self.layout.tokenize(record, self.context, self.layout_options)
        keep = None
        if record.image is not None and self.token_drop is not None:
            share, seed = self.token_drop
            keep = kept_visual_tokens(self.num_visual_tokens, share, seed, record.id, self.epoch)
            tokens = drop_visual_placeholders(tokens, self.image_token_id, keep, self.num_visual_tokens)
        pixel_values = features = None
        if record.image is not None and self.feature_source is not None:
            cached = self.feature_source.read(record.image)
            features = torch.from_numpy(cached) if cached is not None else None
        if record.image is not None and features is None:
            pixel_values = self._pixels(record)
            if self.feature_source is not None:  # decoded now, yet the feature build could not read it
                raise RuntimeError(f"image {record.image} of record {record.id} is missing from the feature cache")
        context = FieldContext(record, tokens, index, self.layout)
        values = {name: SAMPLE_FIELDS[name].extract(context) for name in self.fields}
        return Sample(record.id, tokens.input_ids, tokens.labels, pixel_values, tokens.truncated, values,
                      vision_features=features, visual_keep=keep)

    def _pixels(self, record: Record) -> torch.Tensor:
        try:
            return self.transform(load_image(record.image))
        except OSError as exc:
            raise DataError(str(exc), reason="unreadable_image", record_id=record.id,
                            file=record.source_file, field="image") from exc


class Collator:
    """Samples -> one Batch: one padded row per sample, or with `packing` padding-free rows (vlalign.data.packing)
    of at most `pack_length` tokens, or all in one row when `pack_length` is None (for attention that computes
    each sample alone: the row's length then costs nothing); the batch's samples then appear in packed order."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8, packing: bool = False,
                 pack_length: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.packing = packing
        self.pack_length = pack_length

    def __call__(self, items: list[Sample | Skipped]) -> Batch:
        skips = SkipReport()
        samples = []
        for item in items:
            if isinstance(item, Skipped):
                skips.add(item.error)
            else:
                samples.append(item)
        if self.packing:
            lengths = [len(s.input_ids) for s in samples]
            rows = first_fit_decreasing(lengths, self.pack_length or max(1, sum(lengths)))
            layout = packed_tensors([(s.input_ids, s.labels) for s in samples], rows, self.pad_token_id,
                                    self.pad_to_multiple_of)
            samples = [samples[i] for row in rows for i in row]
        else:
            input_ids, labels, attention_mask = self._padded(samples)
            layout = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        pixels = [s.pixel_values for s in samples if s.pixel_values is not None]
        features = [s.vision_features for s in samples if s.vision_features is not None]
        if pixels and features:
            raise RuntimeError("a batch mixes decoded images and cached tower features")
        keep = [s.visual_keep for s in samples if s.has_image]
        if any(k is None for k in keep) and any(k is not None for k in keep):
            raise RuntimeError("a batch mixes images with dropped visual tokens and images without")
        return Batch(**layout, pixel_values=torch.stack(pixels) if pixels else None,
                     vision_features=torch.stack(features) if features else None,
                     visual_keep=torch.tensor(keep, dtype=torch.long) if keep and keep[0] is not None else None,
                     has_image=torch.tensor([s.has_image for s in samples], dtype=torch.bool),
                     record_ids=[s.record_id for s in samples], skips=skips,
                     truncated=sum(s.truncated for s in samples), extras=gather_fields(samples))

    def _padded(self, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        longest = max((len(s.input_ids) for s in samples), default=0)
        multiple = self.pad_to_multiple_of
        width = -(-longest // multiple) * multiple if longest else 0
        input_ids = torch.full((len(samples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample.input_ids)
            input_ids[row, :n] = torch.tensor(sample.input_ids)
            labels[row, :n] = torch.tensor(sample.labels)
            attention_mask[row, :n] = 1
        return input_ids, labels, attention_mask


def gather_fields(samples: list[Sample]) -> dict[str, Any]:
    """Each declared field over the batch: a tensor for numeric fields, else a list in sample order."""
    names = samples[0].fields if samples else {}
    gathered = {}
    for name in names:
        values = [sample.fields[name] for sample in samples]
        gathered[name] = torch.tensor(values) if SAMPLE_FIELDS[name].collate == "tensor" else values
    return gathered


class LengthGroupedBatchSampler:
    """Batches of similar length (less padding), reshuffled each epoch from (seed, epoch) alone.

    Like LLaVA's LengthGroupedSampler: shuffle, cut into megabatches, sort each by length, split into
    batches, shuffle the batch order, and put the longest batch first so memory problems show at step 1.
    Depends on nothing but (seed, epoch), so a resumed run sees exactly the same order.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool = True,
                 megabatch_factor: int = 50):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.megabatch = batch_size * megabatch_factor
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        if not self.group_by_length:
            return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        batches = []
        for start in range(0, len(order), self.megabatch):
            mega = sorted(order[start:start + self.megabatch], key=lambda i: -self.lengths[i])
            batches.extend(mega[i:i + self.batch_size] for i in range(0, len(mega), self.batch_size))
        longest = max(range(len(batches)), key=lambda b: max(self.lengths[i] for i in batches[b]))
        first = batches.pop(longest)
        rng.shuffle(batches)
        return [first, *batches]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)
