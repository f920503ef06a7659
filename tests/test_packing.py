"""Padding-free packing: the rows, the per-sample mask, and packed == padded for every LLM objective."""

from __future__ import annotations

import json
import shutil
from contextlib import nullcontext

import pytest
import torch

from vlalign.data.dataset import Collator
from vlalign.data.packing import first_fit_decreasing, packed_tensors, segment_ids
from vlalign.data.templates import IGNORE_INDEX
from vlalign.errors import ConfigError

IGNORE = IGNORE_INDEX


def test_first_fit_decreasing_fills_rows_longest_first():
    # capacity 10: 7 opens row 0, 6 opens row 1, 4 fits row 1 (room 4), 3 fits row 0 (room 3), 2 opens row 2
    assert first_fit_decreasing([3, 7, 2, 6, 4], 10) == [[1, 0], [3, 4], [2]]
    assert first_fit_decreasing([5, 5], 10) == [[0, 1]]  # ties keep the batch order
    with pytest.raises(ValueError, match="11 tokens"):
        first_fit_decreasing([11], 10)


def test_packed_rows_restart_positions_and_never_target_across_a_boundary():
    sequences = [([1, 2, 3], [IGNORE, 12, 13]), ([4, 5], [14, 15]), ([6, 7, 8, 9], [IGNORE, IGNORE, 18, 19])]
    layout = packed_tensors(sequences, [[2, 0], [1]], pad_token_id=0, pad_to_multiple_of=4)
    assert layout["input_ids"].tolist() == [[6, 7, 8, 9, 1, 2, 3, 0], [4, 5, 0, 0, 0, 0, 0, 0]]
    # each sample's first label is ignored: it would be the target of the previous sample's last token
    assert layout["labels"].tolist() == [[IGNORE, IGNORE, 18, 19, IGNORE, 12, 13, IGNORE],
                                         [IGNORE, 15, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE]]
    assert layout["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 0], [0, 1, 0, 1, 2, 3, 4, 5]]
    assert layout["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0, 0, 0]]
    assert layout["sample_rows"].tolist() == [0, 0, 1] and layout["sample_starts"].tolist() == [0, 4, 0]
    assert segment_ids(layout["position_ids"]).tolist() == [[0, 0, 0, 0, 1, 1, 1, 2], [0, 0, 1, 1, 1, 1, 1, 1]]


def _build(tiny_config, tmp_path, objectives: dict, stage: int = 1, attn: str = "sdpa"):
    from vlalign.data.build import build_dataset
    from vlalign.data.llava_json import SkipReport
    from vlalign.models.vlm import VisionLanguageModel
    from vlalign.objectives import build_objectives, merged_sample_fields
    from vlalign.train.loop import TrainingModule
    from vlalign.train.stages import apply_tune

    class SingleProcess:
        is_main_process = True

        def main_process_first(self):
            return nullcontext()

    config = tiny_config(stage, f"objectives={json.dumps(objectives)}", f"model.attn_implementation={attn}")
    torch.manual_seed(0)
    model = VisionLanguageModel.from_config(config.model)
    apply_tune(model, stage, config.train.tune)
    built = build_objectives(config.objectives, model)
    dataset = build_dataset(config, model, SkipReport(), merged_sample_fields(config.objectives))
    for objective in built.values():
        objective.prepare(model, dataset, SingleProcess())
    module = TrainingModule(model, built)
    module.train()
    return config, module, dataset


def _loss_and_grads(module, batch):
    module.zero_grad(set_to_none=True)
    total, losses, _ = module(batch)
    total.backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    return total.detach(), losses, grads


def _packed_and_padded(module, dataset, count: int, pack_length: int | None):
    samples = [dataset[i] for i in range(count)]
    pad = module.model.tokenizer.pad_token_id
    packed = Collator(pad, packing=True, pack_length=pack_length)(samples)
    order = {sample.record_id: sample for sample in samples}
    padded = Collator(pad)([order[record_id] for record_id in packed.record_ids])  # the same samples, same order
    return packed, padded


def _sea_labels(toy_data, folder):
    from test_sea import _synthetic_labels

    return str(_synthetic_labels(toy_data, folder))


@pytest.mark.parametrize("name, attn", [("generative", "sdpa"), ("eos_contrastive", "sdpa"),
                                        ("cg_contrastive", "sdpa"), ("sea", "sdpa"),
                                        ("generative", "sdpa_varlen"), ("eos_contrastive", "sdpa_varlen")])
def test_a_packed_batch_has_the_loss_and_gradients_of_the_same_samples_padded(name, attn, tiny_config, toy_data,
                                                                             tmp_path):
    objectives = {"generative": {"weight": 1.0}}
    if name == "eos_contrastive":
        objectives[name] = {"weight": 1.0, "prompt": True, "text_cache": str(tmp_path / "text_cache")}
    elif name == "cg_contrastive":
        objectives[name] = {"weight": 1.0}
    elif name == "sea":
        objectives[name] = {"weight": 1.0, "labels": _sea_labels(toy_data, tmp_path / "labels")}
    _, module, dataset = _build(tiny_config, tmp_path, objectives, attn=attn)
    # per-sample attention packs a batch into one row (vlalign.data.packing.packed_row_length)
    packed, padded = _packed_and_padded(module, dataset, count=8, pack_length=128 if attn == "sdpa" else None)
    assert packed.packed and packed.input_ids.shape[0] < padded.input_ids.shape[0]  # several samples per row
    assert int(packed.attention_mask.sum()) == int(padded.attention_mask.sum())
    packed_total, packed_terms, packed_grads = _loss_and_grads(module, packed)
    padded_total, padded_terms, padded_grads = _loss_and_grads(module, padded)
    assert set(packed_terms) == set(padded_terms) and (name == "generative" or name in packed_terms)
    for term in padded_terms:
        assert float(packed_terms[term]) == pytest.approx(float(padded_terms[term]), rel=1e-5, abs=1e-6), term
    assert float(packed_total) == pytest.approx(float(padded_total), rel=1e-5, abs=1e-6)
    assert packed_grads.keys() == padded_grads.keys() and packed_grads
    for key, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[key], grad, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.parametrize("attn", ["sdpa", "sdpa_varlen"])
def test_chat_samples_pack_with_text_only_records(attn, tiny_config, tmp_path):
    """Stage 2: multi-turn chat samples, some without an image, packed == padded under LoRA."""
    _, module, dataset = _build(tiny_config, tmp_path, {"generative": {"weight": 1.0}}, stage=2, attn=attn)
    packed, padded = _packed_and_padded(module, dataset, count=len(dataset), pack_length=128 if attn == "sdpa" else None)
    assert not padded.has_image.all() and packed.input_ids.shape[0] < padded.input_ids.shape[0]
    packed_total, _, packed_grads = _loss_and_grads(module, packed)
    padded_total, _, padded_grads = _loss_and_grads(module, padded)
    assert float(packed_total) == pytest.approx(float(padded_total), rel=1e-5)
    for key, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[key], grad, rtol=1e-4, atol=1e-6, msg=key)


def test_no_token_attends_across_a_sample_boundary(tiny_config, tmp_path):
    from transformers.masking_utils import create_causal_mask

    _, module, dataset = _build(tiny_config, tmp_path, {"generative": {"weight": 1.0}}, attn="sdpa_varlen")
    packed, _ = _packed_and_padded(module, dataset, count=8, pack_length=128)
    model = module.model.eval()
    owner = packed.token_samples()
    # The mask the LLM builds from the packed position ids (eager: an explicit additive mask).
    llm_config = model.language_model.config
    llm_config._attn_implementation = "eager"
    try:
        embeds = model.language_model.get_input_embeddings()(packed.input_ids)
        mask = create_causal_mask(config=llm_config, inputs_embeds=embeds, attention_mask=None, cache=None,
                                  position_ids=packed.position_ids)
    finally:
        llm_config._attn_implementation = "sdpa"
    allowed = mask[:, 0] == 0  # [R, T, T]: query t may read key s
    same = owner[:, :, None] == owner[:, None, :]
    causal = torch.ones_like(allowed[0]).tril().bool()
    real = owner >= 0
    assert torch.equal(allowed & real[:, :, None] & real[:, None, :], same & causal & real[:, :, None])

    # And in the model itself (sdpa, and per-sample sdpa_varlen): changing the first sample's tokens leaves every
    # other sample's states as they were.
    for attn in ("sdpa", "sdpa_varlen"):
        _states_are_independent(model, packed, owner, attn)


def _states_are_independent(model, packed, owner, attn):
    model.language_model.config._attn_implementation = attn

    def states(input_ids, position_ids):
        with torch.no_grad():
            return model(input_ids, packed.attention_mask, packed.pixel_values, position_ids=position_ids).hidden_states

    first = (owner == 0) & (packed.input_ids != model.image_token_id)
    changed = packed.input_ids.clone()
    changed[first] = (changed[first] + 7) % 300
    others = (owner > 0) & (packed.sample_rows[owner.clamp(min=0)] == packed.sample_rows[0])
    assert others.any()
    before, after = states(packed.input_ids, packed.position_ids), states(changed, packed.position_ids)
    torch.testing.assert_close(after[others], before[others], rtol=0, atol=1e-6)
    # control: with plain positions (one long causal row) the same change does reach the later samples
    plain = torch.arange(packed.input_ids.shape[1]).expand_as(packed.input_ids)
    assert not torch.allclose(states(changed, plain)[others], states(packed.input_ids, plain)[others], atol=1e-4)
    model.language_model.config._attn_implementation = "sdpa"


def _weights(final):
    from safetensors.torch import load_file

    return {key: value.tolist() for key, value in load_file(final / "model.safetensors").items()}


def test_packed_training_resumes_to_identical_weights(tiny_config, tmp_path):
    from vlalign.train.loop import train

    out = tmp_path / "run"
    settings = ("data.packing=true", "train.max_steps=4", "train.save_every=1", "train.keep_checkpoints=0",
                f"train.output_dir={out}", "train.epochs=3")
    expected = _weights(train(tiny_config(2, *settings)))
    shutil.rmtree(out / "final")
    for step in (3, 4):
        shutil.rmtree(out / f"checkpoint-{step:06d}", ignore_errors=True)
    final = train(tiny_config(2, *settings), resume=True)
    assert _weights(final) == expected


@pytest.mark.parametrize("settings, message", [
    (("data.packing=true",), "run no LLM pass"),
    (("train.visual_token_drop=0.5",), "run no LLM pass"),
])
def test_packing_and_token_drop_refuse_objectives_without_an_llm_pass(tiny_config, settings, message):
    from vlalign.train.checks import check_config

    config = tiny_config(1, "model.connector=qformer", "objectives={qformer: {}}", *settings)
    with pytest.raises(ConfigError, match=message):
        check_config(config)


def test_a_packed_batch_moves_to_the_training_device_whole(tiny_config, toy_data, tmp_path):
    """accelerate's loaders call Batch.to: every tensor, the packing, cached features and drop indices included."""
    _, module, dataset = _build(tiny_config, tmp_path, {"generative": {"weight": 1.0}})
    dataset.token_drop = (0.5, 0)
    packed, _ = _packed_and_padded(module, dataset, count=4, pack_length=None)
    packed.vision_features = torch.zeros(4, 16, 32)
    moved = packed.to("meta")
    for name in ("input_ids", "labels", "attention_mask", "position_ids", "sample_rows", "sample_starts",
                 "has_image", "vision_features", "visual_keep"):
        assert getattr(moved, name).device.type == "meta", name
    assert moved.record_ids == packed.record_ids and len(moved) == 4
