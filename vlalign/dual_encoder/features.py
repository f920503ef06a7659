"""Caption pairs from LLaVA JSON, and the frozen towers' outputs computed once for them.

Both towers are frozen, so their outputs never change during training: running them once (batched) and
training the heads on the cached tensors makes every epoch cost only the heads. Each distinct caption is
encoded once, which also makes duplicate captions share exactly the same text features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vlalign.data.images import load_image
from vlalign.data.llava_json import load_records
from vlalign.dual_encoder.packaged import PackagedDualEncoder
from vlalign.errors import DataError


@dataclass(frozen=True)
class CaptionPairs:
    """Image i goes with captions[i]. `record_ids` and `source_file` name them in errors."""

    image_paths: list[Path]
    captions: list[str]
    record_ids: list[str]
    source_file: str

    def __len__(self) -> int:
        return len(self.captions)


@dataclass
class CachedFeatures:
    image_features: torch.Tensor  # [N, P, C] frozen feature-map cells
    text_features: torch.Tensor  # [U, T] one sentence vector per distinct caption
    caption_index: torch.Tensor  # [N] long: image i's caption is distinct_captions[caption_index[i]]
    distinct_captions: list[str]


def load_caption_pairs(path: str | Path, image_root: str | Path | None) -> CaptionPairs:
    """Stage-1 style records: one image each, the caption is the first assistant turn."""
    records = load_records(path, image_root)
    paths, captions, ids = [], [], []
    for record in records:
        if record.image is None:
            raise DataError("text-only record: a dual encoder needs an image per caption (give a caption "
                            "set such as the stage-1 JSON)", reason="no_image", record_id=record.id,
                            file=record.source_file, field="image")
        caption = next(turn.text for turn in record.turns if turn.role == "assistant").strip()
        if not caption:
            raise DataError("the first assistant turn (the caption) is empty", reason="empty_caption",
                            record_id=record.id, file=record.source_file, field="conversations[1]")
        paths.append(record.image)
        captions.append(caption)
        ids.append(record.id)
    return CaptionPairs(paths, captions, ids, str(path))


def _load_pixels(encoder: PackagedDualEncoder, pairs: CaptionPairs, index: int) -> torch.Tensor:
    try:
        return encoder.image_transform(load_image(pairs.image_paths[index]))
    except OSError as exc:
        raise DataError(str(exc), reason="bad_image", record_id=pairs.record_ids[index],
                        file=pairs.source_file, field="image") from exc


def cache_features(encoder: PackagedDualEncoder, pairs: CaptionPairs, batch_size: int = 32,
                   desc: str = "", progress: bool = True) -> CachedFeatures:
    distinct = list(dict.fromkeys(pairs.captions))
    row_of = {caption: row for row, caption in enumerate(distinct)}
    caption_index = torch.tensor([row_of[caption] for caption in pairs.captions], dtype=torch.long)

    image_features = None
    with tqdm(total=len(pairs), desc=f"{desc} image features".strip(), unit="img", disable=not progress) as bar:
        for start in range(0, len(pairs), batch_size):
            stop = min(start + batch_size, len(pairs))
            pixels = torch.stack([_load_pixels(encoder, pairs, i) for i in range(start, stop)])
            features = encoder.image_features(pixels)
            if image_features is None:  # allocate once the tower has told us [P, C]
                image_features = torch.empty(len(pairs), *features.shape[1:], dtype=features.dtype)
            image_features[start:stop] = features
            bar.update(stop - start)

    text_batches = []
    text_batch = 4 * batch_size  # MiniLM is ~20x cheaper per item than the image tower
    with tqdm(total=len(distinct), desc=f"{desc} caption features".strip(), unit="text",
              disable=not progress) as bar:
        for start in range(0, len(distinct), text_batch):
            chunk = distinct[start:start + text_batch]
            text_batches.append(encoder.text_features(chunk))
            bar.update(len(chunk))
    return CachedFeatures(image_features, torch.cat(text_batches), caption_index, distinct)
