"""Dataset, collation and length-grouped batching.

Records are validated up front (cheap checks: JSON, turns, tags, image files exist); templating and
image decoding happen per item, so a 665K-record set starts in seconds. A bad item under the `skip`
policy becomes a `Skipped` marker that the collator counts into the batch, which is how the counts
survive DataLoader worker processes and reach the end-of-run report.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from vlalign.data.images import ImageTransform, load_image
from vlalign.data.llava_json import Record, SkipReport
from vlalign.data.templates import IGNORE_INDEX, tokenize_plain_with_image_eos, tokenize_record
from vlalign.errors import ConfigError, DataError


@dataclass
class Sample:
    record_id: str
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None
    truncated: bool
    image_key: str | None = None  # the record's `image` string
    index: int = -1  # position of the record in the dataset (keys per-record caches)
    image_eos_position: int = -1  # the image-side [EOS] (eos_contrastive's layout), -1 when absent
    caption: str = ""  # the supervised text of a stage-1 (plain) record: what the Q-Former's text branch reads


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
    image_keys: list[str] = field(default_factory=list)  # one per image, in pixel_values order
    indices: list[int] = field(default_factory=list)  # dataset position of each sample
    image_eos_positions: torch.Tensor | None = None  # [B] image-side [EOS] index, -1 where absent
    captions: list[str] = field(default_factory=list)  # per sample; "" for chat records

    def __len__(self) -> int:
        return len(self.record_ids)

    def to(self, device) -> "Batch":
        move = lambda t: t.to(device) if t is not None else None  # noqa: E731
        return Batch(move(self.input_ids), move(self.attention_mask), move(self.labels), move(self.pixel_values),
                     move(self.has_image), self.record_ids, self.skips, self.truncated, self.image_keys,
                     self.indices, move(self.image_eos_positions), self.captions)


class LlavaDataset(Dataset):
    def __init__(self, records: list[Record], tokenizer, transform: ImageTransform, *, fmt: str,
                 image_token_id: int, num_visual_tokens: int, max_length: int, on_error: str = "raise",
                 system_prompt: str | None = None, chat_template: str | None = None,
                 image_eos: dict | None = None):
        self.records = records
        self.tokenizer = tokenizer
        self.transform = transform
        self.fmt = fmt
        self.image_token_id = image_token_id
        self.num_visual_tokens = num_visual_tokens
        self.max_length = max_length
        self.on_error = on_error
        self.system_prompt = system_prompt
        self.chat_template = chat_template
        # {"prompt": bool}: lay stage-1 samples out with the image's own EOS input first (eos_contrastive)
        self.image_eos = image_eos
        if image_eos is not None and fmt != "plain":
            raise ConfigError("eos_contrastive reads the image embedding inside the stage-1 caption sequence; "
                              f"it needs data.format: plain, not {fmt!r}")

    def __len__(self) -> int:
        return len(self.records)

    def estimated_lengths(self) -> list[int]:
        """Token-count estimates for length grouping (~4 characters per token), without tokenizing."""
        return [(self.num_visual_tokens if r.image is not None else 0) + r.text_length // 4 + 8
                for r in self.records]

    def __getitem__(self, index: int) -> Sample | Skipped:
        record = self.records[index]
        try:
            sample = self._build(record)
            sample.index = index
            return sample
        except DataError as error:
            if self.on_error == "skip":
                return Skipped(error)
            raise

    def _tokenize(self, record: Record):
        if self.image_eos is None:
            return tokenize_record(record, self.tokenizer, self.fmt, self.image_token_id, self.num_visual_tokens,
                                   self.max_length, self.system_prompt, self.chat_template)
        from vlalign.models.eos_embedding import IMAGE_NOUNS

        # Seed 000 draws photo|image|picture per sample; drawn from the record id, so a resumed run and
        # every rank see the same prompt for the same record.
        noun = random.Random(record.id).choice(IMAGE_NOUNS)
        return tokenize_plain_with_image_eos(record, self.tokenizer, self.image_token_id, self.num_visual_tokens,
                                             self.max_length, self.image_eos["prompt"], noun)

    def _build(self, record: Record) -> Sample:
        tokens = self._tokenize(record)
        pixel_values = None
        if record.image is not None:
            try:
                pixel_values = self.transform(load_image(record.image))
            except OSError as exc:
                raise DataError(str(exc), reason="unreadable_image", record_id=record.id,
                                file=record.source_file, field="image") from exc
        eos = tokens.image_eos_position if tokens.image_eos_position is not None else -1
        caption = record.turns[-1].text.strip() if self.fmt == "plain" else ""
        return Sample(record.id, tokens.input_ids, tokens.labels, pixel_values, tokens.truncated, record.image_key,
                      image_eos_position=eos, caption=caption)


class Collator:
    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: list[Sample | Skipped]) -> Batch:
        skips = SkipReport()
        samples = []
        for item in items:
            if isinstance(item, Skipped):
                skips.add(item.error)
            else:
                samples.append(item)
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
        images = [s.pixel_values for s in samples if s.pixel_values is not None]
        return Batch(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                     pixel_values=torch.stack(images) if images else None,
                     has_image=torch.tensor([s.pixel_values is not None for s in samples], dtype=torch.bool),
                     record_ids=[s.record_id for s in samples], skips=skips,
                     truncated=sum(s.truncated for s in samples),
                     image_keys=[s.image_key for s in samples if s.pixel_values is not None],
                     indices=[s.index for s in samples],
                     image_eos_positions=torch.tensor([s.image_eos_position for s in samples], dtype=torch.long),
                     captions=[s.caption for s in samples])


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
