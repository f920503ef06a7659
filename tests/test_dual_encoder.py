"""Dual encoders: the packaged LiT-style model (trained here on shapes-world captions) and the HF wrapper.

One small training run (36 shapes-world images, the packaged towers) is shared by the module; the HF wrapper runs
on tiny random CLIP/SigLIP models built in the test with the packaged MiniLM tokenizer (no downloads).
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from vlalign.data.images import load_image
from vlalign.dual_encoder.checkpoint import load_dual_encoder, save_dual_encoder
from vlalign.dual_encoder.hf import HFDualEncoder
from vlalign.dual_encoder.packaged import PackagedDualEncoder
from vlalign.dual_encoder.probe import patch_word_similarity
from vlalign.dual_encoder.cli import add_arguments, format_report, main_train_dual_encoder
from vlalign.dual_encoder.features import load_caption_pairs
from vlalign.dual_encoder.train import unique_caption_batches
from vlalign.errors import ConfigError, DataError

N_TRAIN, N_TEST = 36, 12


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small shapes world: stage1.json (train captions) and test/captions.json (held-out captions)."""
    from vlalign.data.shapes import generate_world

    root = tmp_path_factory.mktemp("dual_world")
    generate_world(root, n_train=N_TRAIN, n_test=N_TEST, seed=0)
    return root


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """Train through the CLI entry point; returns (output folder, report)."""
    out = tmp_path_factory.mktemp("dual_run")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--data", str(world / "stage1.json"), "--image-root", str(world),
                              "--test-data", str(world / "test" / "captions.json"), "--out", str(out),
                              "--epochs", "15", "--batch-size", "12", "--lr", "3e-3", "--seed", "0"])
    return out, main_train_dual_encoder(args)


@pytest.fixture(scope="module")
def loaded(trained):
    return load_dual_encoder(trained[0])


def _test_pairs(world):
    return load_caption_pairs(world / "test" / "captions.json", world)


def _pixels(encoder, world, count: int) -> torch.Tensor:
    pairs = _test_pairs(world)
    return torch.stack([encoder.image_transform(load_image(path)) for path in pairs.image_paths[:count]])


def test_training_lowers_loss_and_retrieves_training_pairs(trained):
    out, report = trained
    assert {p.name for p in out.iterdir()} >= {"heads.safetensors", "config.json", "report.json"}
    assert json.loads((out / "report.json").read_text()) == report
    losses = report["epoch_loss"]
    assert len(losses) == 15 and losses[-1] < 0.6 * losses[0]
    train = report["train"]
    chance = train["chance"]["@1"]
    assert chance == pytest.approx(1 / N_TRAIN)
    assert train["retrieval"]["i2t@1"] > 6 * chance and train["retrieval"]["t2i@1"] > 6 * chance
    assert train["caption_retrieval"]["i2t_caption@1"] > 0.5
    assert set(report["test"]["retrieval"]) == {f"{d}@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    config = json.loads((out / "config.json").read_text())
    assert config["vision_tower"] == "efficientnet-lite0" and config["text_tower"] == "minilm-l6"
    assert config["training"]["epochs"] == 15 and config["temperature"] == pytest.approx(1 / report["logit_scale"])
    assert "i2t@1" in format_report(report) and "modality gap" in format_report(report)


def test_patches_average_to_the_image_embedding(loaded, world):
    pixels = _pixels(loaded, world, 3)
    with torch.no_grad():
        patches, images = loaded.encode_patches(pixels), loaded.encode_images(pixels)
        texts = loaded.encode_texts(["There is a red circle on the left.", "a blue square"])
    assert loaded.patch_grid == (7, 7)
    assert patches.shape == (3, 49, loaded.embed_dim) and images.shape == (3, loaded.embed_dim)
    assert texts.shape == (2, loaded.embed_dim)
    torch.testing.assert_close(patches.mean(dim=1), images, atol=1e-5, rtol=1e-5)
    similarity = patch_word_similarity(loaded, pixels, ["red", "blue", "circle"], template="a {} shape")
    assert similarity.shape == (3, 49, 3) and similarity.abs().max() <= 1 + 1e-5
    with pytest.raises(ValueError, match="non-empty list"):
        patch_word_similarity(loaded, pixels, [])
    with pytest.raises(ValueError, match=r"pixel_values must be \[B, 3, 224, 224\]"):
        loaded.encode_images(pixels[:, :, :64, :64])


def test_saved_folder_reproduces_the_report_and_round_trips(trained, loaded, world, tmp_path):
    from vlalign.losses.retrieval import retrieval_recall

    out, report = trained
    pairs = _test_pairs(world)
    pixels = _pixels(loaded, world, N_TEST)
    with torch.no_grad():  # the live path (image files -> encoder) must match the cached training path
        images, texts = loaded.encode_images(pixels), loaded.encode_texts(pairs.captions)
    live = retrieval_recall(images, texts, ks=(1, 5, 10))
    for name, value in report["test"]["retrieval"].items():
        assert live[name] == pytest.approx(value, abs=1e-9), name
    again = load_dual_encoder(save_dual_encoder(loaded, tmp_path / "copy"))
    with torch.no_grad():
        assert torch.equal(again.encode_images(pixels), images)
        assert torch.equal(again.encode_texts(pairs.captions), texts)
    assert again.logit_scale.item() == pytest.approx(report["logit_scale"])


def test_load_errors_name_file_and_field(trained, tmp_path):
    with pytest.raises(ConfigError, match="config.json does not exist"):
        load_dual_encoder(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "heads.safetensors").write_bytes((trained[0] / "heads.safetensors").read_bytes())
    config = json.loads((trained[0] / "config.json").read_text())
    del config["embed_dim"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"config.json: field 'embed_dim' is missing"):
        load_dual_encoder(broken)
    (broken / "config.json").write_text(json.dumps({**config, "embed_dim": 64}))
    with pytest.raises(ConfigError, match=r"heads.safetensors: tensors do not fit.*size mismatch"):
        load_dual_encoder(broken)
    (broken / "heads.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ConfigError, match=r"heads.safetensors: tensors do not fit"):
        load_dual_encoder(broken)


def test_text_only_records_are_rejected_by_name(world, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "t1", "conversations": [{"from": "human", "value": "Hi"},
                                                              {"from": "gpt", "value": "Hello."}]}]))
    with pytest.raises(DataError, match=r"record 't1', field 'image'.*needs an image"):
        load_caption_pairs(bad, world)


def test_batches_never_hold_a_caption_twice():
    captions = [0] * 5 + [1] * 3 + list(range(2, 30))  # 36 pairs, caption 0 five times
    batches = unique_caption_batches(captions, 12, torch.Generator().manual_seed(0))
    assert sorted(i for batch in batches for i in batch) == list(range(36))  # each pair exactly once
    assert all(len({captions[i] for i in batch}) == len(batch) for batch in batches)
    assert max(map(len, batches)) - min(map(len, batches)) <= 1
    # more copies of one caption than ceil(N / batch) batches: more, smaller batches, still no repeats
    batches = unique_caption_batches([7] * 6 + [1, 2], 8, torch.Generator().manual_seed(0))
    assert len(batches) == 6 and all(len({([7] * 6 + [1, 2])[i] for i in b}) == len(b) for b in batches)


def _tiny_hf(family: str):
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    from vlalign.models.sources import parse_source

    tokenizer = AutoTokenizer.from_pretrained(parse_source("minilm-l6").location)  # any real tokenizer will do
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=64)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4)
    torch.manual_seed(0)
    if family == "clip":  # pool text at [SEP], which this tokenizer appends
        config = CLIPConfig(text_config={**text, "eos_token_id": tokenizer.sep_token_id}, vision_config=vision,
                            projection_dim=16)
        return HFDualEncoder(CLIPModel(config).eval(), tokenizer)
    config = SiglipConfig(text_config={**text, "pad_token_id": tokenizer.pad_token_id}, vision_config=vision)
    return HFDualEncoder(SiglipModel(config).eval(), tokenizer)


def test_hf_clip_wrapper_matches_clip_and_projects_patches_like_cls():
    encoder = _tiny_hf("clip")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        images, patches = encoder.encode_images(pixels), encoder.encode_patches(pixels)
        texts = encoder.encode_texts(["a red circle", "two blue squares on the right"])
        reference = encoder.model.get_image_features(pixel_values=pixels)
        reference = reference if isinstance(reference, torch.Tensor) else reference.pooler_output
        # the patch path applied to the CLS token must give CLIP's own image embedding
        hidden = encoder.model.vision_model(pixel_values=pixels).last_hidden_state
        transformer = getattr(encoder.model.vision_model, "vision_model", encoder.model.vision_model)
        cls = encoder.model.visual_projection(transformer.post_layernorm(hidden[:, 0]))
    assert encoder.patch_grid == (4, 4) and encoder.embed_dim == 16
    assert images.shape == (2, 16) and patches.shape == (2, 16, 16) and texts.shape == (2, 16)
    torch.testing.assert_close(images, reference)
    torch.testing.assert_close(cls, images)
    assert encoder.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-3)  # CLIP's init, exponentiated
    assert encoder.logit_bias is None
    assert encoder.image_transform.size == 32 and encoder.image_transform.aspect == "crop"


def test_hf_siglip_wrapper_shapes():
    encoder = _tiny_hf("siglip")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        images, patches = encoder.encode_images(pixels), encoder.encode_patches(pixels)
        texts = encoder.encode_texts(["a red circle", "a blue square"])
        reference = encoder.model.get_image_features(pixel_values=pixels)
        reference = reference if isinstance(reference, torch.Tensor) else reference.pooler_output
    assert encoder.patch_grid == (4, 4)  # no CLS to drop
    assert images.shape == (2, 32) and patches.shape == (2, 16, 32) and texts.shape == (2, 32)
    torch.testing.assert_close(images, reference)
    assert encoder.logit_bias is not None and encoder.image_transform.aspect == "resize"


def test_packaged_encoder_keeps_towers_frozen_in_train_mode(loaded):
    loaded.train()
    assert not loaded.vision_tower.training and not loaded.text_tower.training
    assert all(not p.requires_grad for p in loaded.vision_tower.parameters())
    assert all(p.requires_grad for p in loaded.heads.parameters())
    loaded.eval()
    assert isinstance(loaded, PackagedDualEncoder)
