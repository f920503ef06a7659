"""EOS embeddings (Ak et al. sec. 3.2/3.4): the prompts, the [EOS] position, padding invariance."""

from __future__ import annotations

import random

import pytest
import torch

from vlalign.data import eos_layout as layout
from vlalign.models import eos_embedding as eos
from vlalign.models.vlm import VisionLanguageModel


@pytest.fixture(scope="module")
def model(tiny_models):
    from vlalign.config import load_config

    config = load_config(None, [f"model.vision_tower={tiny_models['clip']}", f"model.llm={tiny_models['llm']}"])
    torch.manual_seed(0)
    return VisionLanguageModel.from_config(config.model).eval()


def test_text_prompt_wraps_the_text_and_ends_with_eos(model):
    tok = model.tokenizer
    ids, cut = layout.text_prompt_ids(tok, "a red circle", prompt=True)
    assert not cut and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[:-1]).strip() == "This sentence: a red circle means:"
    bare, _ = layout.text_prompt_ids(tok, "a red circle", prompt=False)
    assert tok.decode(bare[:-1]).strip() == "a red circle" and bare[-1] == tok.eos_token_id


def test_long_text_is_cut_but_keeps_template_and_eos(model):
    tok = model.tokenizer
    ids, cut = layout.text_prompt_ids(tok, "red circle " * 40, prompt=True, max_length=20)
    assert cut and len(ids) == 20 and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[:-1]).strip().endswith("means:")
    with pytest.raises(ValueError, match="leaves no room"):
        layout.text_prompt_ids(tok, "red", prompt=True, max_length=3)


def test_image_prompt_holds_every_visual_token_once(model):
    ids = layout.image_prompt_ids(model.tokenizer, model.image_token_id, model.num_visual_tokens, noun="photo")
    assert ids.count(model.image_token_id) == model.num_visual_tokens == 16
    text = model.tokenizer.decode([i for i in ids[:-1] if i != model.image_token_id])
    assert text.replace(" ", "") == "Thisphoto:means:" and ids[-1] == model.tokenizer.eos_token_id
    inputs = layout.image_inputs(model.tokenizer, model.image_token_id, 16, 40, rng=random.Random(0))
    nouns = {model.tokenizer.decode(row[:4].tolist()) for row in inputs.input_ids}
    assert len(nouns) == 3  # training draws photo / image / picture


@torch.no_grad()
def test_eos_embedding_does_not_depend_on_batch_padding(model):
    alone, _ = eos.embed_texts(model, ["a red circle"])
    batched, _ = eos.embed_texts(model, ["a red circle", "two blue squares above a green star on the left"])
    assert torch.allclose(alone[0], batched[0], atol=1e-5)
    assert not torch.allclose(batched[0], batched[1], atol=1e-3)
    pixels = torch.randn(2, 3, 32, 32)
    images = eos.embed_images(model, pixels)
    assert images.shape == (2, model.hidden_size)
    assert torch.allclose(images[1], eos.embed_images(model, pixels[1:])[0], atol=1e-5)
