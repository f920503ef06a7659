"""`eos_contrastive` and `cg_contrastive` through the real loop on the tiny models."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vlalign.config import dump_config
from vlalign.data.llava_json import SkipReport
from vlalign.data import eos_layout
from vlalign.models import eos_embedding
from vlalign.models.vlm import VisionLanguageModel
from vlalign.objectives import build_objectives
from vlalign.objectives import merged_sample_fields
from vlalign.objectives.temperature import LogitScale
from vlalign.objectives.text_cache import build_text_cache
from vlalign.train.loop import TrainingModule, train
from vlalign.train.stages import apply_tune


class _Accelerator:
    """What Objective.prepare uses of accelerate's Accelerator, single process."""

    is_main_process = True

    def main_process_first(self):
        from contextlib import nullcontext

        return nullcontext()


def _setup(tiny_config, tmp_path, objectives: dict):
    from vlalign.data.build import build_dataset
    from vlalign.data.dataset import Collator

    config = tiny_config(1, f"objectives={json.dumps(objectives)}")
    model = VisionLanguageModel.from_config(config.model)
    apply_tune(model, 1, config.train.tune)
    built = build_objectives(config.objectives, model)
    dataset = build_dataset(config, model, SkipReport(), merged_sample_fields(config.objectives))
    for objective in built.values():
        objective.prepare(model, dataset, _Accelerator())
    batch = Collator(model.tokenizer.pad_token_id)([dataset[i] for i in range(4)])
    return config, model, built, dataset, batch


EOS = {"generative": {"weight": 1.0}, "eos_contrastive": {"weight": 1.0, "prompt": True}}


def test_image_embedding_read_in_the_training_pass_equals_the_standalone_definition(tiny_config, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setenv("VLALIGN_CACHE", str(tmp_path / "cache"))
    _, model, objectives, dataset, batch = _setup(tiny_config, tmp_path, EOS)
    model.eval()
    output = model(batch.input_ids, batch.attention_mask, batch.pixel_values)
    in_sequence = output.hidden_states[torch.arange(len(batch)), batch.extras["image_eos_position"]]
    # The standalone EOS input of the same image, with the noun the dataset drew for each record.
    for row, index in enumerate(batch.extras["index"]):
        record = dataset.records[index]
        candidates = [eos_layout.image_prompt_ids(model.tokenizer, model.image_token_id,
                                                     model.num_visual_tokens, True, noun)
                      for noun in eos_layout.IMAGE_NOUNS]
        matching = [ids for ids in candidates if batch.input_ids[row, :len(ids)].tolist() == ids]
        assert len(matching) == 1, record.id  # the sample starts with exactly one of the prompts
        ids = matching[0]
        assert batch.extras["image_eos_position"][row] == len(ids) - 1
        alone = model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), batch.pixel_values[row:row + 1])
        assert torch.allclose(alone.hidden_states[0, -1], in_sequence[row], atol=1e-5), record.id
    # The caption after it is still what the generative loss supervises.
    labels = batch.labels[0][batch.labels[0] != -100].tolist()
    assert model.tokenizer.decode(labels[:-1]).strip() == dataset.records[batch.extras["index"][0]].turns[1].text.strip()


def test_cached_caption_rows_are_the_llm_eos_embeddings(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("VLALIGN_CACHE", str(tmp_path / "cache"))
    _, model, objectives, dataset, _ = _setup(tiny_config, tmp_path, EOS)
    cached = objectives["eos_contrastive"].text_embeddings
    captions = [dataset.records[i].turns[1].text.strip() for i in (0, 3)]
    model.eval()
    with torch.no_grad():
        direct, _ = eos_embedding.embed_texts(model, captions, prompt=True, max_length=dataset.max_length)
    assert torch.allclose(torch.from_numpy(cached[[0, 3]]).float(), direct, atol=2e-2, rtol=1e-2)  # float16 cache


@pytest.mark.parametrize("objectives", [EOS, {"generative": {"weight": 1.0}, "cg_contrastive": {"weight": 1.0}},
                                        {"generative": {}, "eos_contrastive": {"loss": "sigmoid"}}])
def test_gradients_reach_connector_and_temperature_and_nothing_frozen(tiny_config, tmp_path, monkeypatch,
                                                                      objectives):
    monkeypatch.setenv("VLALIGN_CACHE", str(tmp_path / "cache"))
    _, model, built, _, batch = _setup(tiny_config, tmp_path, objectives)
    module = TrainingModule(model, built)
    module.train()
    total, losses, metrics = module(batch)
    name = next(n for n in objectives if n != "generative")
    assert set(losses) == {"generative", name} and math.isfinite(float(losses[name]))
    assert any(key.endswith("logit_scale") for key in metrics)
    # the contrastive term alone: its gradient must reach the connector and the temperature
    losses_only = built[name](module.model(batch.input_ids, batch.attention_mask, batch.pixel_values), batch, module.model)
    losses_only.losses[name].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.multi_modal_projector.parameters())
    scale_params = [p for n, p in built[name].named_parameters() if "scale" in n]
    assert scale_params and all(p.grad is not None and p.grad.abs() > 0 for p in scale_params)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_temperature_is_clamped_like_clip():
    scale = LogitScale(0.07, max_scale=100.0)
    assert float(scale()) == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        scale.log_scale.fill_(10.0)  # e^10 >> 100
    assert float(scale()) == pytest.approx(100.0)
    scale().backward()
    assert float(scale.log_scale.grad) == 0.0  # at the bound the optimiser stops pushing
    scale.clamp_()
    assert float(scale.log_scale) == pytest.approx(math.log(100.0))


def test_text_cache_is_invalidated_by_prompt_data_and_llm_and_resumes(tiny_config, tmp_path, monkeypatch):
    from vlalign.objectives import text_cache

    monkeypatch.setattr(text_cache, "CHUNK_ROWS", 4)
    config = tiny_config(1)
    model = VisionLanguageModel.from_config(config.model)
    texts = [f"a red circle number {i}" for i in range(10)]
    data = tmp_path / "data.json"
    data.write_text("[1]")
    root = tmp_path / "cache"
    first = build_text_cache(model, texts, data, True, "eos", 64, root, batch_size=3, progress=False)
    assert len(list(root.iterdir())) == 1
    again = build_text_cache(model, texts, data, True, "eos", 64, root, batch_size=3, progress=False)
    assert len(list(root.iterdir())) == 1 and (again == first).all()
    build_text_cache(model, texts, data, False, "eos", 64, root, progress=False)  # prompt changed
    assert len(list(root.iterdir())) == 2
    data.write_text("[2]")  # data file changed
    build_text_cache(model, texts, data, True, "eos", 64, root, progress=False)
    assert len(list(root.iterdir())) == 3
    with torch.no_grad():  # LLM weights changed
        model.language_model.get_input_embeddings().weight[0] += 1.0
    build_text_cache(model, texts, data, True, "eos", 64, root, progress=False)
    assert len(list(root.iterdir())) == 4

    # interrupted after the second chunk: the rerun keeps rows 0..7 and computes only 8..9
    resumed_root = tmp_path / "resumed"
    monkeypatch.setenv("VLALIGN_FAULT", "text_cache_after_8")
    with pytest.raises(SystemExit):
        build_text_cache(model, texts, data, True, "eos", 64, resumed_root, progress=False)
    monkeypatch.delenv("VLALIGN_FAULT")
    folder = next(resumed_root.iterdir())
    assert json.loads((folder / "progress.json").read_text())["rows_done"] == 8
    assert not (folder / "complete.json").exists()
    calls = []
    from vlalign.objectives import text_cache

    original = text_cache.text_inputs
    monkeypatch.setattr(text_cache, "text_inputs", lambda tok, batch, *a: calls.append(len(batch)) or original(tok, batch, *a))
    resumed = build_text_cache(model, texts, data, True, "eos", 64, resumed_root, batch_size=3, progress=False)
    assert sum(calls) == 2
    fresh = build_text_cache(model, texts, data, True, "eos", 64, tmp_path / "fresh", progress=False)
    assert (resumed == fresh).all()


def test_stage1_run_logs_each_term_and_the_temperature(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("VLALIGN_CACHE", str(tmp_path / "cache"))
    objectives = {"generative": {"weight": 1.0}, "eos_contrastive": {"weight": 0.5, "prompt": True},
                  "cg_contrastive": {"weight": 1.0}}
    config = tiny_config(1, "train.max_steps=3", f"objectives={json.dumps(objectives)}")
    final = train(config)
    rows = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
    for key in ("generative", "eos_contrastive", "cg_contrastive", "eos_contrastive_logit_scale",
                "cg_contrastive_logit_scale", "eos_contrastive_pairs"):
        assert all(key in row for row in rows), key
    row = rows[0]
    expected = row["generative"] + 0.5 * row["eos_contrastive"] + row["cg_contrastive"]
    assert row["loss"] == pytest.approx(expected, rel=1e-4)
    assert row["eos_contrastive_pairs"] == 4  # batch of 4, one process


def test_bad_setups_fail_clearly(tiny_config, tmp_path, monkeypatch):
    from vlalign.errors import ConfigError

    monkeypatch.setenv("VLALIGN_CACHE", str(tmp_path / "cache"))
    stage2 = tiny_config(2, "train.max_steps=1", f"objectives={json.dumps(EOS)}")
    with pytest.raises(ConfigError, match="data.format: plain"):
        train(stage2)
    frozen_violation = tiny_config(1, "train.max_steps=1", "train.tune.llm=full", f"objectives={json.dumps(EOS)}")
    with pytest.raises(ConfigError, match="frozen LLM"):
        train(frozen_violation)
    # all-masked caption: the record is named
    _, model, built, _, batch = _setup(tiny_config, tmp_path, {"generative": {}, "cg_contrastive": {}})
    batch.labels[1] = -100
    output = model(batch.input_ids, batch.attention_mask, batch.pixel_values)
    with pytest.raises(ValueError, match=batch.record_ids[1]):
        built["cg_contrastive"](output, batch, model)
    with pytest.raises(ConfigError, match="temperature"):
        build_objectives({"eos_contrastive": {"temperature": 0}}, model)
