"""Dataset items, collation, length-grouped batching and the image transform."""

import json
import random
import statistics

import numpy as np
import pytest
import torch
from PIL import Image

from vlalign.data.dataset import Collator, LengthGroupedBatchSampler, LlavaDataset, Skipped
from vlalign.data.images import ImageTransform, load_image
from vlalign.data.llava_json import load_records
from vlalign.data.templates import IGNORE_INDEX
from vlalign.errors import DataError
from vlalign.models.llm import load_tokenizer

NV = 16
MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.2, 0.3)


@pytest.fixture(scope="module")
def tok(tiny_models):
    return load_tokenizer(tiny_models["llm"], "<image>")


def _conversation(question, answer, image=False):
    return [{"from": "human", "value": ("<image>\n" if image else "") + question}, {"from": "gpt", "value": answer}]


@pytest.fixture
def mixed_dataset(tmp_path, tok):
    """Records in order: red image, text-only, blue image (longer answer), text-only."""
    Image.new("RGB", (40, 40), (255, 0, 0)).save(tmp_path / "red.png")
    Image.new("RGB", (40, 40), (0, 0, 255)).save(tmp_path / "blue.png")
    records = [
        {"id": "img-red", "image": "red.png", "conversations": _conversation("What color is it?", "Red.", True)},
        {"id": "text-a", "conversations": _conversation("Name a fruit.", "An apple.")},
        {"id": "img-blue", "image": "blue.png", "conversations": _conversation(
            "Describe the image briefly.", "There is a blue square on the right and a red circle on the left.", True)},
        {"id": "text-b", "conversations": _conversation("Say hi.", "Hi.")},
    ]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(records))
    transform = ImageTransform(32, MEAN, STD, "pad")
    return LlavaDataset(load_records(path, tmp_path), tok, transform, fmt="chat",
                        image_token_id=tok.convert_tokens_to_ids("<image>"), num_visual_tokens=NV, max_length=256)


def test_collator_pads_right_and_masks_padding(mixed_dataset, tok):
    samples = [mixed_dataset[i] for i in range(len(mixed_dataset))]
    lengths = [len(s.input_ids) for s in samples]
    assert len(set(lengths)) > 1  # the padding below is really exercised
    batch = Collator(tok.pad_token_id)(samples)

    width = batch.input_ids.shape[1]
    assert width >= max(lengths) and width % 8 == 0 and width - max(lengths) < 8
    assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape == (4, width)
    for row, sample in enumerate(samples):
        n = len(sample.input_ids)
        assert batch.input_ids[row, :n].tolist() == sample.input_ids  # content starts at column 0
        assert batch.labels[row, :n].tolist() == sample.labels
        assert batch.attention_mask[row, :n].eq(1).all()
        assert batch.attention_mask[row, n:].eq(0).all()
        assert batch.input_ids[row, n:].eq(tok.pad_token_id).all()
        assert batch.labels[row, n:].eq(IGNORE_INDEX).all()
    assert batch.record_ids == ["img-red", "text-a", "img-blue", "text-b"]


def test_collator_stacks_images_in_sample_order(mixed_dataset, tok):
    samples = [mixed_dataset[i] for i in (2, 1, 0, 3)]  # blue, text, red, text
    batch = Collator(tok.pad_token_id)(samples)
    assert batch.has_image.tolist() == [True, False, True, False]
    assert batch.has_image.dtype == torch.bool
    assert batch.pixel_values.shape == (2, 3, 32, 32)
    red = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(MEAN)) / torch.tensor(STD)
    blue = (torch.tensor([0.0, 0.0, 1.0]) - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(batch.pixel_values[0, :, 16, 16], blue, atol=1e-4)
    assert torch.allclose(batch.pixel_values[1, :, 16, 16], red, atol=1e-4)
    # Placeholders: one block of NV per image row, none in text rows.
    image_id = mixed_dataset.image_token_id
    assert (batch.input_ids == image_id).sum(dim=1).tolist() == [NV, 0, NV, 0]


def test_collator_text_only_batch_has_no_pixel_values(mixed_dataset, tok):
    batch = Collator(tok.pad_token_id)([mixed_dataset[1], mixed_dataset[3]])
    assert batch.pixel_values is None
    assert batch.has_image.tolist() == [False, False]


def test_collator_counts_skipped_items_and_keeps_the_rest(mixed_dataset, tok):
    skipped = Skipped(DataError("cannot read", reason="unreadable_image", record_id="bad-1"))
    batch = Collator(tok.pad_token_id)([skipped, mixed_dataset[1]])
    assert len(batch) == 1 and batch.record_ids == ["text-a"]
    assert batch.skips.counts == {"unreadable_image": 1}
    other = Skipped(DataError("cannot read", reason="unreadable_image", record_id="bad-2"))
    empty = Collator(tok.pad_token_id)([skipped, other])
    assert len(empty) == 0 and empty.input_ids.shape[0] == 0 and empty.skips.total == 2
    # The same record met twice (e.g. in two epochs) is one skipped record.
    assert Collator(tok.pad_token_id)([skipped, skipped]).skips.total == 1


# --- LengthGroupedBatchSampler -------------------------------------------------------------------------------


def _lengths(n=403, seed=1):
    rng = random.Random(seed)
    return [rng.choice([rng.randint(5, 30), rng.randint(500, 2000)]) for _ in range(n)]


@pytest.mark.parametrize("group", [True, False])
@pytest.mark.parametrize("n, batch_size, factor", [(403, 8, 50), (403, 8, 4), (7, 3, 50), (1, 4, 50)])
def test_sampler_yields_every_index_once_per_epoch(group, n, batch_size, factor):
    sampler = LengthGroupedBatchSampler(_lengths(n), batch_size, seed=3, group_by_length=group,
                                        megabatch_factor=factor)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(n))
        assert len(batches) == len(sampler)
        assert all(1 <= len(b) <= batch_size for b in batches)


@pytest.mark.parametrize("group", [True, False])
def test_sampler_order_depends_on_seed_and_epoch_only(group):
    lengths = _lengths()
    first = LengthGroupedBatchSampler(lengths, 8, seed=5, group_by_length=group)
    second = LengthGroupedBatchSampler(lengths, 8, seed=5, group_by_length=group)
    first.set_epoch(2)
    second.set_epoch(0)
    _ = list(second)  # iterating other epochs must not change what epoch 2 gives
    second.set_epoch(2)
    assert list(first) == list(second)
    assert list(first) == list(first)  # re-iterating the same epoch repeats it
    second.set_epoch(3)
    assert list(second) != list(first)
    other_seed = LengthGroupedBatchSampler(lengths, 8, seed=6, group_by_length=group)
    other_seed.set_epoch(2)
    assert list(other_seed) != list(first)


def _mean_spread(batches, lengths):
    return statistics.mean(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)


def test_grouping_by_length_reduces_within_batch_spread():
    lengths = _lengths()
    grouped = LengthGroupedBatchSampler(lengths, 8, seed=0, group_by_length=True)
    random_batches = LengthGroupedBatchSampler(lengths, 8, seed=0, group_by_length=False)
    for epoch in range(3):
        grouped.set_epoch(epoch)
        random_batches.set_epoch(epoch)
        assert _mean_spread(list(grouped), lengths) < 0.25 * _mean_spread(list(random_batches), lengths)


def test_grouped_batches_are_not_in_length_order():
    # Grouping must not turn into a curriculum: batch order after the first is shuffled.
    lengths = _lengths()
    batches = list(LengthGroupedBatchSampler(lengths, 8, seed=0, group_by_length=True))
    longest = [max(lengths[i] for i in b) for b in batches[1:]]
    assert longest != sorted(longest, reverse=True) and longest != sorted(longest)


@pytest.mark.parametrize("factor", [50, 3])
def test_longest_batch_comes_first(factor):
    lengths = _lengths()
    sampler = LengthGroupedBatchSampler(lengths, 8, seed=0, group_by_length=True, megabatch_factor=factor)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert max(lengths) in [lengths[i] for i in batches[0]]
        assert max(lengths[i] for i in batches[0]) == max(max(lengths[i] for i in b) for b in batches)


# --- ImageTransform ------------------------------------------------------------------------------------------


def _striped(width=64, height=32):
    """Red image with a green stripe at the far left and a blue stripe at the far right."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:] = (255, 0, 0)
    array[:, :8] = (0, 255, 0)
    array[:, -8:] = (0, 0, 255)
    return Image.fromarray(array)


def _normalised(rgb):
    return (torch.tensor(rgb, dtype=torch.float32) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)


def test_pad_keeps_the_whole_image_and_pads_with_the_mean():
    out = ImageTransform(32, MEAN, STD, "pad")(_striped())
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    # 64x32 -> padded to 64x64 (16 rows above and below) -> 32x32: image in rows 8..23.
    # The mean colour is truncated to whole 8-bit values as LLaVA-1.5 does (int(mean * 255)), so "zero" is
    # within one grey level.
    tolerance = 1.01 / 255 / min(STD)
    assert out[:, :6].abs().max() < tolerance and out[:, 26:].abs().max() < tolerance
    # exactly LLaVA's fill: 0.5 * 255 = 127.5 -> 127, 102.0 -> 102, 76.5 -> 76 (rounding would give 128, 102, 76)
    assert torch.allclose(out[:, 0, 0], _normalised((127, 102, 76)), atol=1e-5)
    # Both edge stripes survive (a centre crop would lose them), the middle stays red.
    assert torch.allclose(out[:, 16, 1], _normalised((0, 255, 0)), atol=0.05)
    assert torch.allclose(out[:, 16, 30], _normalised((0, 0, 255)), atol=0.05)
    assert torch.allclose(out[:, 16, 16], _normalised((255, 0, 0)), atol=0.05)


def test_pad_works_for_portrait_images_too():
    portrait = _striped().transpose(Image.Transpose.ROTATE_90)  # 32 wide, 64 tall
    out = ImageTransform(32, MEAN, STD, "pad")(portrait)
    tolerance = 0.6 / 255 / min(STD)
    assert out[:, :, :6].abs().max() < tolerance and out[:, :, 26:].abs().max() < tolerance
    assert not torch.allclose(out[:, :, 10:22], torch.zeros(1), atol=0.1)


def test_crop_and_resize_modes_for_contrast():
    crop = ImageTransform(32, MEAN, STD, "crop")(_striped())
    assert crop.shape == (3, 32, 32)
    assert torch.allclose(crop[:, 16, 1], _normalised((255, 0, 0)), atol=0.05)  # stripes cropped away
    resize = ImageTransform(32, MEAN, STD, "resize")(_striped())
    assert resize.shape == (3, 32, 32)
    assert torch.allclose(resize[:, 2, 1], _normalised((0, 255, 0)), atol=0.05)  # stretched, nothing padded
    assert torch.allclose(resize[:, 2, 16], _normalised((255, 0, 0)), atol=0.05)


def test_square_input_and_non_rgb_modes(tmp_path):
    grey = Image.new("L", (48, 48), 128)
    out = ImageTransform(24, MEAN, STD, "pad")(grey)
    assert out.shape == (3, 24, 24)
    assert torch.allclose(out[:, 12, 12], _normalised((128, 128, 128)), atol=1e-4)
    rgba = Image.new("RGBA", (20, 10), (0, 0, 255, 255))
    rgba.save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png").mode == "RGBA"  # the transform composites transparency (test_image_modes)
    assert ImageTransform(16, MEAN, STD, "pad")(load_image(tmp_path / "a.png")).shape == (3, 16, 16)
