"""`vlalign export --format remote-code`: round trips through transformers alone, without vlalign importable.

Each export is loaded in a fresh `python -I` subprocess run outside the repository, with the editable install's
import hooks removed (it asserts that `import vlalign` fails) and a fresh transformers module cache. There the folder
goes through AutoProcessor and AutoModelForImageTextToText with trust_remote_code (the image file and the
chat-template-rendered prompt, as a user would give them); its logits must equal vlalign's own forward on the same
image and prompt (fp32, atol 1e-4) and its greedy generation must be token-identical to vlalign's (`model.generate`
and `vlalign.generate.answer`). Covered: the demo's packaged models (EfficientNet-Lite0 stage 3 + mlp2x_gelu with
pool 2 + SmolLM2-135M, stage 1 then LoRA stage 2), tiny CLIP + tiny Llama with avgpool / merge + full selection,
a stage-1 (plain) checkpoint, qformer and xformer; refusals for what the format cannot carry.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image

from export_helpers import WITHOUT_VLALIGN
from vlalign.config import ModelConfig, load_config
from vlalign.data.build import image_transform_for, read_chat_template
from vlalign.data.images import load_image
from vlalign.data.templates import prompt_ids
from vlalign.errors import ConfigError
from vlalign.export.common import folder_size
from vlalign.export.remote_code import check_remote_code_exportable, export_remote_code
from vlalign.generate import answer, load_checkpoint_model
from vlalign.train.loop import train
from vlalign.train.stages import merge_lora

REPO = Path(__file__).resolve().parents[1]
PROMPT = "What color is the shape?"
NEW_TOKENS = 8

CHILD = WITHOUT_VLALIGN + r'''
import json

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
inputs = processor(images=Image.open(image_path), text=text, return_tensors="pt")
new_tokens = int(new_tokens)
with torch.no_grad():
    logits = model(**inputs).logits[0]
    forced = model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    free = model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens)
start = inputs["input_ids"].shape[1]
torch.save({"text": text, "input_ids": inputs["input_ids"][0], "pixel_values": inputs["pixel_values"][0],
            "logits": logits, "forced": forced[0, start:],
            "answer": processor.batch_decode(free[:, start:], skip_special_tokens=True)[0].strip(),
            "model_class": type(model).__name__, "processor_class": type(processor).__name__,
            "llm_class": type(model.language_model).__name__, "dtype": str(model.dtype),
            "vlalign_modules": sorted(name for name in sys.modules if name.split(".")[0] == "vlalign")}, out)
'''


def run_without_vlalign(export: Path, image: Path, tmp_path: Path) -> dict:
    script, out = tmp_path / "child.py", tmp_path / "child.pt"
    script.write_text(CHILD)
    outside = tmp_path / "elsewhere"
    outside.mkdir(exist_ok=True)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-I", str(script), str(export), str(image), PROMPT, str(NEW_TOKENS), str(out), str(REPO)]
    result = subprocess.run(command, cwd=outside, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out, weights_only=False)


def vlalign_reference(checkpoint: Path, image: Path) -> dict:
    """What vlalign itself computes for the same image and prompt: ids, pixels, logits, greedy tokens, answer."""
    model, config = load_checkpoint_model(checkpoint, device="cpu")
    ids = prompt_ids(model.tokenizer, config.data.format, PROMPT, model.image_token_id, model.num_visual_tokens,
                     config.data.system_prompt, read_chat_template(config.data.chat_template))
    input_ids = torch.tensor([ids])
    mask = torch.ones_like(input_ids)
    pixels = image_transform_for(model)(load_image(image)).unsqueeze(0)
    with torch.no_grad():
        logits = model(input_ids, mask, pixels).logits[0]
        for module in model.modules():  # the same forward without LoRA: shows that a lost merge would be seen
            if isinstance(module, BaseTunerLayer):
                module.enable_adapters(False)
        without_lora = model(input_ids, mask, pixels).logits[0]
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.enable_adapters(True)
        # vlalign's inference merges LoRA into the weights (load_checkpoint_model(merge_adapters=True)), as the
        # export does; merged vs separate adapters differ by fp32 rounding (2e-4 on logits of ~40 here)
        merge_lora(model.language_model)
        unmerged, logits = logits, model(input_ids, mask, pixels).logits[0]
    forced = model.generate(input_ids, mask, pixels, do_sample=False, max_new_tokens=NEW_TOKENS,
                            min_new_tokens=NEW_TOKENS)[0]
    return {"ids": ids, "pixels": pixels[0], "logits": logits, "unmerged": unmerged, "without_lora": without_lora,
            "forced": forced,
            "answer": answer(model, config, image, PROMPT, max_new_tokens=NEW_TOKENS)}


def assert_round_trip(export: Path, checkpoint: Path, image: Path, tmp_path: Path, lora: bool = False) -> dict:
    child = run_without_vlalign(export, image, tmp_path)
    ours = vlalign_reference(checkpoint, image)
    assert child["vlalign_modules"] == []
    assert (child["model_class"], child["processor_class"]) == ("VlalignForConditionalGeneration", "VlalignProcessor")
    assert child["input_ids"].tolist() == ours["ids"]
    torch.testing.assert_close(child["pixel_values"], ours["pixels"], atol=1e-6, rtol=0)
    assert child["logits"].shape == ours["logits"].shape
    torch.testing.assert_close(child["logits"], ours["logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(ours["unmerged"], ours["logits"], atol=1e-3, rtol=1e-5)
    lora_effect = float((ours["logits"] - ours["without_lora"]).abs().max())
    print(f"\n[remote-code] {export.name}: max |logit difference| {float((child['logits'] - ours['logits']).abs().max()):.1e}"
          f" (LoRA changes them by up to {lora_effect:.1e})")
    if lora:
        assert lora_effect > 1e-2  # the merged LoRA matters here, so losing it would fail the comparison
    assert child["forced"].tolist() == ours["forced"].tolist() and len(ours["forced"]) == NEW_TOKENS
    assert child["answer"] == ours["answer"]
    return child


def timed_export(checkpoint: Path, out: Path, dtype: str | None = None) -> tuple[Path, float]:
    """The export, timed. No seed is set before it or before vlalign_reference's load: the `<image>` rows added at
    load are the same at every load, so the comparison covers every logit column whatever the RNG state."""
    start = time.perf_counter()
    folder = export_remote_code(checkpoint, out, dtype)
    return folder, time.perf_counter() - start


# --- the demo's packaged models ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_checkpoints(toy_data, tmp_path_factory):
    """The quickstart configs as the demo trains them (EfficientNet-Lite0 stage 3 + mlp2x_gelu pool 2 + SmolLM2-135M,
    LoRA r 16 at lr 2e-4 in stage 2), 2 steps per stage on the toy data."""
    root = tmp_path_factory.mktemp("demo_export")
    data = [f"data.image_root={toy_data['image_root']}", "train.batch_size=2", "train.log_every=1",
            "train.max_steps=2"]
    stage1 = train(load_config("configs/quickstart-stage1.yaml",
                               [f"data.train_file={toy_data['stage1']}", f"train.output_dir={root / 's1'}", *data]))
    stage2 = train(load_config("configs/quickstart-stage2.yaml",
                               [f"data.train_file={toy_data['stage2']}", f"train.output_dir={root / 's2'}", *data,
                                f"train.init_from={stage1}"]))
    return {"stage1": stage1, "stage2": stage2}


def test_demo_checkpoint_exports_and_round_trips_without_vlalign(demo_checkpoints, toy_data, tmp_path):
    export, seconds = timed_export(demo_checkpoints["stage2"], tmp_path / "demo-export")
    size, files = folder_size(export)
    print(f"\n[remote-code] demo export: {seconds:.1f} s, {size / 1e6:.1f} MB in {files} files")
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == "vlalign" and config["vision_tower_kind"] == "efficientnet-lite0"
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_vlalign.VlalignForConditionalGeneration"
    assert config["vision_tower_facts"]["stage"] == 3 and config["connector_options"]["pool"] == 2
    assert config["image_seq_length"] == 49 and config["vlalign_export"]["lora_layers_merged"] > 0
    for name in ("configuration_vlalign.py", "modeling_vlalign.py", "image_processing_vlalign.py",
                 "processing_vlalign.py", "generation_config.json", "chat_template.jinja", "processor_config.json"):
        assert (export / name).is_file(), name
    child = assert_round_trip(export, demo_checkpoints["stage2"], toy_data["image_root"] / "images" / "00000.png",
                              tmp_path, lora=True)
    assert child["llm_class"] == "LlamaForCausalLM"
    assert "Answer questions about the image." in child["text"]  # the stage-2 system prompt


def test_demo_stage1_checkpoint_round_trips(demo_checkpoints, toy_data, tmp_path):
    export, _ = timed_export(demo_checkpoints["stage1"], tmp_path / "demo-stage1-export")
    child = assert_round_trip(export, demo_checkpoints["stage1"], toy_data["image_root"] / "images" / "00004.png",
                              tmp_path)
    assert child["text"] == f"<image>{PROMPT}"  # stage 1 trains on the plain layout: the image, then the text


# --- tiny CLIP + tiny Llama ---------------------------------------------------------------------------------------

TINY_SETUPS = {
    "avgpool-norm": ("model.connector=avgpool", "model.connector_options={pool: 2, norm: true}"),
    "mlp-merge-full": ("model.connector=mlp2x_gelu", "model.connector_options={merge: 2, norm: true}",
                       "model.vision_feature_select=full"),
}


def _tiny_stages(tiny_config, extra):
    stage1 = train(tiny_config(1, *extra, "train.max_steps=2"))
    stage2 = train(tiny_config(2, *extra, "train.max_steps=2", f"train.init_from={stage1}",
                               "train.tune.llm=lora", "train.tune.lora.r=4", "train.tune.lora.alpha=8",
                               "train.lr=5e-2"))
    return stage1, stage2


@pytest.mark.parametrize("setup", sorted(TINY_SETUPS))
def test_tiny_clip_patch_connectors_round_trip(setup, tiny_config, toy_data, tmp_path):
    _, stage2 = _tiny_stages(tiny_config, TINY_SETUPS[setup])
    export, _ = timed_export(stage2, tmp_path / "export")
    config = json.loads((export / "config.json").read_text())
    assert config["vision_tower_kind"] == "hf" and config["vision_config"]["model_type"] == "clip_vision_model"
    wide = tmp_path / "wide.png"  # not square, so the processor's padding to a square is compared too
    Image.open(toy_data["image_root"] / "images" / "00001.png").convert("RGB").resize((64, 37)).save(wide)
    child = assert_round_trip(export, stage2, wide, tmp_path, lora=True)
    assert child["llm_class"] == "LlamaForCausalLM"


def test_stage1_plain_checkpoint_round_trips(tiny_config, toy_data, tmp_path):
    stage1 = train(tiny_config(1, *TINY_SETUPS["avgpool-norm"], "train.max_steps=2"))
    export, _ = timed_export(stage1, tmp_path / "export")
    child = assert_round_trip(export, stage1, toy_data["image_root"] / "images" / "00002.png", tmp_path)
    assert child["text"] == f"<image>{PROMPT}"  # the plain layout: the image, then the text


@pytest.mark.parametrize("connector", ["qformer", "xformer"])
def test_query_connectors_round_trip(connector, tiny_config, tiny_query_models, toy_data, tmp_path):
    options = f"{{num_queries: 4, text_encoder: {tiny_query_models['bert']}, max_text_length: 24"
    if connector == "xformer":
        options += f", mae: {tiny_query_models['mae']}"
    stage2 = train(tiny_config(2, f"model.connector={connector}", f"model.connector_options={options}}}",
                               "train.max_steps=2", "train.tune.llm=lora", "train.tune.lora.r=4"))
    export, _ = timed_export(stage2, tmp_path / "export")
    facts = json.loads((export / "config.json").read_text())["connector_facts"]
    assert facts["layers"] == 2 and ("mae_branch" in facts) == (connector == "xformer")
    assert_round_trip(export, stage2, toy_data["image_root"] / "images" / "00003.png", tmp_path)


def test_the_command_writes_a_bf16_export_of_an_avgpool_checkpoint(tiny_config, tmp_path, capsys):
    """`vlalign export` without --format picks remote-code for what llava cannot hold, and --dtype bf16 is kept."""
    from safetensors import safe_open

    from vlalign.export.cli import add_parser

    checkpoint = train(tiny_config(1, *TINY_SETUPS["avgpool-norm"], "train.max_steps=1"))
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    out = tmp_path / "out"
    args = parser.parse_args(["export", "--checkpoint", str(checkpoint.parent), "--out", str(out), "--dtype", "bf16"])
    args.func(args)
    printed = capsys.readouterr().out
    assert "remote-code" in printed and "trust_remote_code=True" in printed
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}
    assert dtypes == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


# --- refusals -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, message", [
    ({"vision_tower": "timm:resnet18"}, "vision tower 'timm:resnet18' is a timm model"),
    ({"connector": "mystery"}, "connector 'mystery' has no code the folder could carry"),
])
def test_what_the_folder_cannot_carry_is_refused_by_name(fields, message):
    with pytest.raises(ConfigError, match=message):
        check_remote_code_exportable(ModelConfig(**fields))


def test_export_refuses_a_folder_that_is_not_an_earlier_export(tiny_config, tmp_path):
    stage1 = train(tiny_config(1, "train.max_steps=1"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="is not an earlier vlalign export"):
        export_remote_code(stage1, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"


def test_the_assembly_names_a_definition_that_vlalign_no_longer_has():
    from vlalign.export.remote_code_sources import Part, part_source
    from vlalign.models import vision

    with pytest.raises(ConfigError, match="vlalign.models.vision no longer defines 'RenamedTower'"):
        part_source(Part(vision, "RenamedTower"))
