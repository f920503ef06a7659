"""Integration: the packaged offline models (SmolLM2-135M GGUF + EfficientNet-Lite0) through both stages.

The converted SmolLM2 folder is cached under VLALIGN_CACHE (~/.cache/vlalign), so only the first test
session pays the ~25 s GGUF conversion.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from vlalign.config import load_config
from vlalign.data.toy import write_toy_dataset
from vlalign.generate import answer, load_checkpoint_model
from vlalign.train.loop import train


@pytest.fixture(scope="module")
def packaged_data(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("packaged"), n_images=6, seed=1)


def _config(stage: int, data, out, *extra):
    name = f"configs/quickstart-stage{stage}.yaml"
    return load_config(name, [f"data.train_file={data[f'stage{stage}']}", f"data.image_root={data['image_root']}",
                              f"train.output_dir={out}", "train.batch_size=2", "train.log_every=1", *extra])


def test_packaged_models_two_stages_and_generate(packaged_data, tmp_path):
    stage1 = train(_config(1, packaged_data, tmp_path / "s1", "train.max_steps=2"))
    state = json.loads((stage1 / "trainer_state.json").read_text())
    assert state["step"] == 2
    metrics = [json.loads(line) for line in (tmp_path / "s1" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < m["generative"] < 20 for m in metrics)

    stage2 = train(_config(2, packaged_data, tmp_path / "s2", "train.max_steps=2", f"train.init_from={stage1}"))
    weights = load_file(str(stage2 / "model.safetensors"))
    assert any("lora_B" in name for name in weights)
    assert weights["multi_modal_projector.linear_1.weight"].shape == (576, 80)  # stage-3 features

    model, config = load_checkpoint_model(tmp_path / "s2")
    assert model.num_visual_tokens == 49  # 14x14 stage-3 map, 2x2-pooled by the connector
    image = packaged_data["image_root"] / "images" / "00000.png"
    reply = answer(model, config, image, "What color is the shape?", max_new_tokens=8)
    assert isinstance(reply, str) and reply  # the instruct LLM always says something
    sampled = answer(model, config, image, "Describe it.", max_new_tokens=6, do_sample=True, temperature=0.8)
    assert isinstance(sampled, str)
    torch.testing.assert_close(model.multi_modal_projector.linear_1.weight,
                               weights["multi_modal_projector.linear_1.weight"])
