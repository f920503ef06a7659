"""train.visual_token_drop: a random share of each image's visual tokens, and their placeholders, leave stage 1."""

from __future__ import annotations

import json

import pytest
import torch

from vlalign.data.templates import IGNORE_INDEX, Tokenized
from vlalign.data.token_drop import drop_visual_placeholders, kept_count, kept_visual_tokens
from vlalign.errors import ConfigError
from vlalign.train.loop import train

IMG = 99


def test_dropping_removes_exactly_the_dropped_placeholders_and_moves_later_positions():
    # BOS, 4 placeholders, "means", EOS(image side), caption, EOS
    tokens = Tokenized(input_ids=[1, IMG, IMG, IMG, IMG, 5, 6, 7, 8],
                       labels=[IGNORE_INDEX] * 7 + [7, 8], truncated=False,
                       layout_fields={"image_eos_position": 6})
    dropped = drop_visual_placeholders(tokens, IMG, keep=[0, 3], num_visual_tokens=4)
    assert dropped.input_ids == [1, IMG, IMG, 5, 6, 7, 8]
    assert dropped.labels == [IGNORE_INDEX] * 5 + [7, 8]
    assert dropped.layout_fields == {"image_eos_position": 4}  # still the image-side EOS (token 6)
    with pytest.raises(ValueError, match="one run of 5"):
        drop_visual_placeholders(tokens, IMG, keep=[0], num_visual_tokens=5)


def test_the_draw_depends_on_seed_record_and_epoch_only():
    first = kept_visual_tokens(49, 0.5, 0, "rec-1", 0)
    assert len(first) == kept_count(49, 0.5) == 25 and first == sorted(set(first))
    assert first == kept_visual_tokens(49, 0.5, 0, "rec-1", 0)
    assert first != kept_visual_tokens(49, 0.5, 0, "rec-1", 1)
    assert first != kept_visual_tokens(49, 0.5, 0, "rec-2", 0)
    assert first != kept_visual_tokens(49, 0.5, 1, "rec-1", 0)
    assert kept_count(4, 0.99) == 1  # at least one token stays


def test_the_llm_sees_the_kept_visual_tokens_at_the_remaining_placeholders(tiny_config):
    from vlalign.data.build import build_dataset
    from vlalign.data.dataset import Collator
    from vlalign.data.llava_json import SkipReport
    from vlalign.models.vlm import VisionLanguageModel

    config = tiny_config(1)
    model = VisionLanguageModel.from_config(config.model).eval()
    dataset = build_dataset(config, model, SkipReport())
    full = Collator(model.tokenizer.pad_token_id)([dataset[i] for i in range(3)])
    dataset.token_drop = (0.5, 0)
    dropped = Collator(model.tokenizer.pad_token_id)([dataset[i] for i in range(3)])
    assert dropped.visual_keep.shape == (3, kept_count(model.num_visual_tokens, 0.5))
    assert (dropped.input_ids == model.image_token_id).sum() == 3 * dropped.visual_keep.shape[1]
    assert int(dropped.attention_mask.sum()) == int(full.attention_mask.sum()) - 3 * (
        model.num_visual_tokens - dropped.visual_keep.shape[1])
    with torch.no_grad():
        output = model(dropped.input_ids, dropped.attention_mask, dropped.pixel_values,
                       visual_keep=dropped.visual_keep)
    assert output.visual_tokens.shape[1] == model.num_visual_tokens  # objectives still see every token
    for image in range(3):
        shown = output.inputs_embeds[image][dropped.input_ids[image] == model.image_token_id]
        torch.testing.assert_close(shown, output.visual_tokens[image, dropped.visual_keep[image]])


def test_stage1_trains_with_eos_contrastive_on_shorter_sequences(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("VLALIGN_CACHE", str(tmp_path / "cache"))
    objectives = {"generative": {"weight": 1.0}, "eos_contrastive": {"weight": 1.0, "prompt": True}}
    final = train(tiny_config(1, f"objectives={json.dumps(objectives)}", "train.visual_token_drop=0.5",
                              "train.epochs=2"))
    rows = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(row["eos_contrastive"] > 0 and row["generative"] > 0 for row in rows)


def test_stage2_refuses_the_drop(tiny_config):
    from vlalign.train.checks import check_config

    with pytest.raises(ConfigError, match="stage 1"):
        check_config(tiny_config(2, "train.visual_token_drop=0.5"))
