"""SEA: patch labelling, the sampler, the label cache and the `sea` objective in the loop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vlalign.errors import ConfigError, DataError
from vlalign.labels.cache import LabelCache, LabelCacheWriter
from vlalign.labels.grid import grid_mapping, map_labels
from vlalign.labels.topn import label_patches
from vlalign.objectives.sea import dedup_labels, sample_labels, sample_window_patches


# ---- label_patches -------------------------------------------------------------------------------------

def test_label_patches_hand_computed():
    patches = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    words = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, -3.0]])  # e_x, (e_x+e_y)/sqrt2, -e_y
    indices, scores = label_patches(patches, words, top_n=2)
    r = 1 / math.sqrt(2)
    # patch 0: cos = 1, r, 0 -> words 0, 1; patch 1: 0, r, -1 -> 1, 0 (cos 0 is kept: only < 0 drops)
    # patch 2 = -(e_x+e_y)/sqrt2: cos = -r, -1, r -> word 2 (r), then word 0 (-r) which is dropped
    assert indices.tolist() == [[0, 1], [1, 0], [2, -1]]
    torch.testing.assert_close(scores, torch.tensor([[1.0, r], [r, 0.0], [r, 0.0]]))
    assert indices.dtype == torch.int64


def test_label_patches_pads_when_the_list_is_shorter_than_top_n():
    indices, scores = label_patches(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]), top_n=3)
    assert indices.tolist() == [[0, -1, -1]] and scores.tolist() == [[1.0, 0.0, 0.0]]


@pytest.mark.parametrize("patches, words, top_n", [
    (torch.zeros(3, 4), torch.zeros(2, 5), 1),   # different D
    (torch.zeros(3, 4), torch.zeros(0, 4), 1),   # empty word list
    (torch.zeros(3, 4), torch.zeros(2, 4), 0),   # top_n < 1
])
def test_label_patches_bad_input(patches, words, top_n):
    with pytest.raises(ValueError, match="label_patches"):
        label_patches(patches, words, top_n)


# ---- sampling ------------------------------------------------------------------------------------------

def test_window_sampling_takes_at_most_one_labelled_patch_per_window():
    generator = torch.Generator().manual_seed(0)
    for trial in range(50):
        rows, cols = 3 + trial % 5, 2 + trial % 6  # odd sizes: edge windows are partial
        has_label = torch.rand(4, rows, cols, generator=generator) < 0.6
        image, cell = sample_window_patches(has_label, 2, generator)
        row, col = cell // cols, cell % cols
        assert has_label[image, row, col].all()  # never an unlabelled patch
        windows = list(zip(image.tolist(), (row // 2).tolist(), (col // 2).tolist()))
        assert len(windows) == len(set(windows))  # never two patches of one window
        # and every window with a labelled patch gives one
        padded = torch.nn.functional.pad(has_label, (0, cols % 2, 0, rows % 2))
        expected = padded.reshape(4, (rows + 1) // 2, 2, (cols + 1) // 2, 2).any(dim=4).any(dim=2).sum()
        assert len(windows) == int(expected)


def test_a_patch_without_labels_is_skipped_not_an_error():
    has_label = torch.zeros(2, 4, 4, dtype=torch.bool)
    has_label[1, 0, 0] = True
    image, cell = sample_window_patches(has_label, 2, torch.Generator().manual_seed(0))
    assert image.tolist() == [1] and cell.tolist() == [0]


def test_sampled_labels_are_valid_and_follow_the_scores():
    indices = torch.tensor([[4, 7, 9, -1]])
    scores = torch.tensor([[0.6, 0.3, 0.1, 0.0]])
    generator = torch.Generator().manual_seed(123)
    draws = sample_labels(indices.expand(20000, -1), scores.expand(20000, -1), generator)
    assert set(draws.tolist()) <= {4, 7, 9}
    counts = np.array([(draws == word).sum().item() for word in (4, 7, 9)])
    expected = np.array([0.6, 0.3, 0.1]) * 20000
    chi2 = (((counts - expected) ** 2) / expected).sum()
    assert chi2 < 13.8  # chi-square, 2 degrees of freedom, p = 0.001


def test_sample_labels_refuses_a_row_without_labels():
    with pytest.raises(ValueError, match="without any valid label"):
        sample_labels(torch.tensor([[-1, -1]]), torch.zeros(1, 2), torch.Generator())


def test_dedup_keeps_one_position_per_label_at_random():
    labels = torch.tensor([5, 3, 5, 5, 8, 3])
    seen = set()
    for seed in range(40):
        keep = dedup_labels(labels, torch.Generator().manual_seed(seed))
        assert sorted(labels[keep].tolist()) == [3, 5, 8] and keep.tolist() == sorted(keep.tolist())
        seen.add(tuple(keep.tolist()))
    assert len(seen) > 1  # which duplicate survives is drawn, not always the first


# ---- cache and grids -----------------------------------------------------------------------------------

SPEC = {"encoder": "e", "encoder_fingerprint": "f", "top_n": 2, "grid": [2, 2], "image_aspect": "pad",
        "template": "{}", "shard_size": 2, "image_size": 32}


def _labels(count: int, fill: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((count, 4, 2), fill, np.int64), np.full((count, 4, 2), 0.5, np.float32)


def test_cache_round_trip_and_unknown_image_error(tmp_path):
    writer = LabelCacheWriter(tmp_path / "c", SPEC, ["red", "circle", "blue"], ["a.png", "b.png", "c.png"])
    for shard in writer.pending():
        writer.write_shard(shard, *_labels(len(writer.plan[shard]), shard))
    writer.finalize()
    cache = LabelCache(tmp_path / "c")
    assert cache.words == ["red", "circle", "blue"] and cache.grid == (2, 2) and len(cache) == 3
    indices, _ = cache.lookup(["c.png", "a.png"])
    assert indices[:, 0, 0].tolist() == [1, 0]  # c.png is in the second shard
    with pytest.raises(DataError, match="nope.png"):
        cache.lookup(["nope.png"])


def test_cache_resumes_after_an_interrupted_run(tmp_path):
    keys = [f"{i}.png" for i in range(5)]
    writer = LabelCacheWriter(tmp_path / "c", SPEC, ["w"], keys)
    first = writer.pending()[0]
    writer.write_shard(first, *_labels(len(writer.plan[first]), 0))  # then the run dies
    with pytest.raises(ConfigError):
        LabelCache(tmp_path / "c")  # incomplete: not readable as a cache
    resumed = LabelCacheWriter(tmp_path / "c", SPEC, ["w"], keys)
    assert resumed.pending() == [s for s in writer.pending() if s != first] and first not in resumed.pending()
    changed = dict(SPEC, top_n=3)  # a different labelling is not a resume
    with pytest.raises(ConfigError, match="top_n"):
        LabelCacheWriter(tmp_path / "c", changed, ["w"], keys)


def test_grid_mismatch_is_a_clear_error():
    grid_mapping((4, 4), (4, 4))
    grid_mapping((4, 4), (2, 2))  # 2x2 label patches merge into one token: a documented mapping
    with pytest.raises(ConfigError, match="does not map"):
        grid_mapping((4, 4), (3, 3))
    with pytest.raises(ConfigError, match="img.png"):
        map_labels(torch.zeros(1, 9, 2, dtype=torch.long), torch.zeros(1, 9, 2), (4, 4), (4, 4), "img.png")


# ---- end to end: label-patches -> sea objective in the training loop -------------------------------------

@pytest.fixture(scope="module")
def tiny_encoder():
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from vlalign.dual_encoder.hf import HFDualEncoder
    from vlalign.models.sources import parse_source

    tokenizer = AutoTokenizer.from_pretrained(parse_source("minilm-l6").location)
    torch.manual_seed(0)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=64, eos_token_id=tokenizer.sep_token_id)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4)  # 4x4 patches, the tiny VLM tower's grid
    return HFDualEncoder(CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval(),
                         tokenizer)


WORDS = ["red", "blue", "green", "circle", "square", "triangle", "left", "right", "shape", "color"]


def _label(encoder, data, out, **kwargs):
    from vlalign.dual_encoder.labeller import collect_images, label_images

    items = collect_images(data["stage1"], data["image_root"])
    return label_images(encoder, items, WORDS, out, encoder_id="tiny", fingerprint="0", top_n=3,
                        batch_size=4, progress=False, **kwargs), items


def test_labelling_resumes_and_matches_an_uninterrupted_run(tiny_encoder, toy_data, tmp_path):
    whole, items = _label(tiny_encoder, toy_data, tmp_path / "whole", shard_size=4)
    assert whole["run"]["images_labelled"] == len(items) and whole["run"]["shards_reused"] == 0
    assert (tmp_path / "whole" / "label_summary.png").stat().st_size > 0
    partial = tmp_path / "partial"
    _label(tiny_encoder, toy_data, partial, shard_size=4)
    shard_markers = sorted((partial / "shards").glob("*.json"))
    assert len(shard_markers) == math.ceil(len(items) / 4)
    shard_markers[-1].unlink()  # as if the run died while writing its last shard, before the index
    (partial / "index.json").unlink()
    again, _ = _label(tiny_encoder, toy_data, partial, shard_size=4)
    assert 0 < again["run"]["images_labelled"] < len(items) and again["run"]["shards_reused"] >= 1
    a, b = LabelCache(tmp_path / "whole"), LabelCache(partial)
    keys = [item.key for item in items]
    np.testing.assert_array_equal(a.lookup(keys)[0], b.lookup(keys)[0])
    np.testing.assert_allclose(a.lookup(keys)[1], b.lookup(keys)[1], rtol=1e-3, atol=1e-3)


def _synthetic_labels(toy_data, folder, drop_last_image: bool = False):
    """A label cache over the toy images with known, dense labels (the loop test should not depend on what
    a random encoder happens to find): every patch has 3 words; patch 0 of each image has none."""
    from vlalign.dual_encoder.labeller import collect_images

    keys = [item.key for item in collect_images(toy_data["stage1"], toy_data["image_root"])]
    keys = keys[:-1] if drop_last_image else keys
    spec = dict(SPEC, grid=[4, 4], top_n=3, shard_size=8)
    writer = LabelCacheWriter(folder, spec, WORDS, keys)
    rng = np.random.default_rng(0)
    for shard in writer.pending():
        count = len(writer.plan[shard])
        indices = np.stack([rng.permutation(len(WORDS))[:3] for _ in range(count * 16)]).reshape(count, 16, 3)
        scores = np.sort(rng.uniform(0.1, 0.9, (count, 16, 3)), axis=-1)[..., ::-1].astype(np.float32)
        indices[:, 0], scores[:, 0] = -1, 0.0
        writer.write_shard(shard, indices, scores)
    writer.finalize()
    return folder


def test_sea_objective_trains_and_logs(toy_data, tiny_config, tmp_path):
    from vlalign.train.loop import train

    labels = _synthetic_labels(toy_data, tmp_path / "labels")
    objectives = {"generative": {"weight": 1.0}, "sea": {"weight": 1.0, "labels": str(labels)}}
    config = tiny_config(1, f"objectives={json.dumps(objectives)}", "train.epochs=2")
    train(config)
    rows = [json.loads(line) for line in (tmp_path / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert all("sea" in row and math.isfinite(row["sea"]) and row["sea"] > 0 for row in rows)
    # 4 images x 4 windows of the 4x4 grid (patch 0 unlabelled, its window still has 3 others)
    assert all(row["sea_sampled"] == 16 and 2 <= row["sea_pairs"] <= len(WORDS) for row in rows)
    assert rows[0]["loss"] == pytest.approx(rows[0]["generative"] + rows[0]["sea"], rel=1e-4)


def test_sea_gradients_reach_connector_and_temperature_only(toy_data, tiny_config, tmp_path):
    from vlalign.data.build import build_dataset
    from vlalign.data.dataset import Collator
    from vlalign.data.llava_json import SkipReport
    from vlalign.models.vlm import VisionLanguageModel
    from vlalign.objectives import build_objectives, merged_sample_fields
    from vlalign.train.stages import apply_tune

    labels = _synthetic_labels(toy_data, tmp_path / "labels")
    config = tiny_config(1, f"objectives={json.dumps({'sea': {'labels': str(labels)}})}")
    model = VisionLanguageModel.from_config(config.model)
    apply_tune(model, 1, config.train.tune)
    objective = build_objectives(config.objectives, model)["sea"]
    dataset = build_dataset(config, model, SkipReport(), merged_sample_fields(config.objectives))
    objective.prepare(model, dataset, None)
    batch = Collator(model.tokenizer.pad_token_id)([dataset[i] for i in range(4)])
    first = objective(model(batch.input_ids, batch.attention_mask, batch.pixel_values), batch, model)
    again = objective(model(batch.input_ids, batch.attention_mask, batch.pixel_values), batch, model)
    torch.testing.assert_close(first.losses["sea"], again.losses["sea"])  # seeded by the batch: reproducible
    assert first.metrics["sea_pairs"] >= 2
    first.losses["sea"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.multi_modal_projector.parameters())
    assert objective.logit_scale.log_scale.grad is not None
    assert all(p.grad is None for p in model.language_model.parameters())
    assert all(p.grad is None for p in model.vision_tower.parameters())


def test_sea_refuses_a_cache_missing_an_image(toy_data, tiny_config, tmp_path):
    from vlalign.train.loop import train

    labels = _synthetic_labels(toy_data, tmp_path / "labels", drop_last_image=True)
    objectives = {"generative": {"weight": 1.0}, "sea": {"labels": str(labels)}}
    with pytest.raises(DataError, match="no patch labels"):
        train(tiny_config(1, f"objectives={json.dumps(objectives)}"))


def test_sea_refuses_labels_on_another_grid(toy_data, tiny_config, tmp_path):
    from vlalign.dual_encoder.labeller import collect_images
    from vlalign.train.loop import train

    keys = [item.key for item in collect_images(toy_data["stage1"], toy_data["image_root"])]
    writer = LabelCacheWriter(tmp_path / "labels", dict(SPEC, grid=[3, 3], shard_size=64), WORDS, keys)
    writer.write_shard(0, np.zeros((len(keys), 9, 2), np.int64), np.full((len(keys), 9, 2), 0.5, np.float32))
    writer.finalize()
    objectives = {"generative": {"weight": 1.0}, "sea": {"labels": str(tmp_path / "labels")}}
    with pytest.raises(ConfigError, match="3x3"):
        train(tiny_config(1, f"objectives={json.dumps(objectives)}"))
