"""`vlalign export --format llava`: round trips through transformers alone, in a process that cannot import vlalign.

Each export is loaded in a fresh `python -I` subprocess run outside the repository, with the editable install's
import hooks removed (it asserts that `import vlalign` fails). There the export goes through AutoProcessor (the
image file and the chat-template-rendered prompt, as a user would give them) and LlavaForConditionalGeneration; its
logits must equal vlalign's own forward on the same image and prompt (fp32, atol 1e-4) and its greedy generation must
be token-identical to vlalign's (`model.generate` and `vlalign.generate.answer`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from export_helpers import WITHOUT_VLALIGN
from vlalign.data.build import image_transform_for, read_chat_template
from vlalign.data.images import load_image
from vlalign.data.templates import prompt_ids
from vlalign.errors import ConfigError
from vlalign.export.cli import add_parser, chosen_format
from vlalign.export.llava import config_refusal, export_llava
from vlalign.export.llava_weights import linear_as_llava_projector
from vlalign.generate import answer, load_checkpoint_model
from vlalign.train.loop import train

REPO = Path(__file__).resolve().parents[1]
PROMPT = "What color is the shape?"
NEW_TOKENS = 8

CHILD = WITHOUT_VLALIGN + r'''

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

processor = AutoProcessor.from_pretrained(folder)
model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
inputs = processor(images=Image.open(image_path), text=text, return_tensors="pt")
new_tokens = int(new_tokens)
with torch.no_grad():
    logits = model(**inputs).logits[0]
    forced = model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                            output_logits=True, return_dict_in_generate=True)
    free = model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens)
start = inputs["input_ids"].shape[1]
torch.save({"text": text, "input_ids": inputs["input_ids"][0], "pixel_values": inputs["pixel_values"][0],
            "logits": logits, "forced": forced.sequences[0, start:], "step_logits": torch.stack(forced.logits)[:, 0],
            "answer": processor.batch_decode(free[:, start:], skip_special_tokens=True)[0].strip(),
            "vlalign_modules": sorted(name for name in sys.modules if name.split(".")[0] == "vlalign")}, out)
'''


def run_without_vlalign(export: Path, image: Path, tmp_path: Path) -> dict:
    script, out = tmp_path / "child.py", tmp_path / "child.pt"
    script.write_text(CHILD)
    outside = tmp_path / "elsewhere"
    outside.mkdir(exist_ok=True)
    command = [sys.executable, "-I", str(script), str(export), str(image), PROMPT, str(NEW_TOKENS), str(out), str(REPO)]
    result = subprocess.run(command, cwd=outside, capture_output=True, text=True, timeout=600)
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
    # inputs are embeddings, so the sequences are the new tokens only
    forced = model.generate(input_ids, mask, pixels, do_sample=False, max_new_tokens=NEW_TOKENS,
                            min_new_tokens=NEW_TOKENS, output_logits=True, return_dict_in_generate=True)
    return {"ids": ids, "pixels": pixels[0], "logits": logits, "forced": forced.sequences[0],
            "step_logits": torch.stack(forced.logits)[:, 0],
            "answer": answer(model, config, image, PROMPT, max_new_tokens=NEW_TOKENS)}


def assert_round_trip(export: Path, checkpoint: Path, image: Path, tmp_path: Path) -> dict:
    child = run_without_vlalign(export, image, tmp_path)
    ours = vlalign_reference(checkpoint, image)
    assert child["vlalign_modules"] == []
    assert child["input_ids"].tolist() == ours["ids"]
    torch.testing.assert_close(child["pixel_values"], ours["pixels"], atol=1e-5, rtol=0)
    assert child["logits"].shape == ours["logits"].shape
    torch.testing.assert_close(child["logits"], ours["logits"], atol=1e-4, rtol=0)
    assert child["forced"].tolist() == ours["forced"].tolist() and len(ours["forced"]) == NEW_TOKENS
    # each cached decoding step too, not only its argmax (a random tiny LLM often repeats one token)
    torch.testing.assert_close(child["step_logits"], ours["step_logits"], atol=1e-4, rtol=0)
    assert child["answer"] == ours["answer"]
    return child


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            weights.update({name: handle.get_tensor(name) for name in handle.keys()})
    return weights


def test_clip_mlp_lora_stage2_round_trip(tiny_config, tiny_models, toy_data, tmp_path):
    stage1 = train(tiny_config(1, "train.max_steps=2"))
    stage2 = train(tiny_config(2, "train.max_steps=2", f"train.init_from={stage1}", "train.tune.llm=lora",
                               "train.tune.lora.r=4", "train.lr=1e-2"))
    result = export_llava(stage2.parent, tmp_path / "llava", dtype="fp32")
    assert result.merged_lora_layers > 0 and result.dtype == "fp32" and result.size_bytes > 0

    config = json.loads((result.folder / "config.json").read_text())
    assert config["model_type"] == "llava" and config["architectures"] == ["LlavaForConditionalGeneration"]
    assert config["vision_feature_select_strategy"] == "default"  # CLIP's CLS dropped, as vlalign's `patch`
    assert config["vision_feature_layer"] == -2 and config["image_seq_length"] == 16
    assert config["projector_hidden_act"] == "gelu"
    assert config["text_config"]["architectures"] == ["LlamaForCausalLM"]  # what vLLM builds the LLM from
    processor = json.loads((result.folder / "processor_config.json").read_text())
    assert processor["patch_size"] == 8 and processor["num_additional_image_tokens"] == 1
    image_processor = json.loads((result.folder / "preprocessor_config.json").read_text())  # as llava-hf's repos
    assert image_processor["do_pad"] is True and image_processor["do_center_crop"] is False
    assert (result.folder / "generation_config.json").is_file()

    weights = read_weights(result.folder)
    assert not [name for name in weights if "lora" in name]
    assert "vision_tower.vision_model.embeddings.patch_embedding.weight" in weights  # llava-hf's hub names
    base = read_weights(Path(tiny_models["llm"]))
    merged = weights["language_model.model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(merged, base["model.layers.0.self_attn.q_proj.weight"])  # the LoRA is in it

    image = toy_data["image_root"] / "images" / "00000.png"
    child = assert_round_trip(result.folder, stage2.parent, image, tmp_path)
    assert child["text"].startswith("<|im_start|>user\n<image>\n" + PROMPT)


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory) -> str:
    """A tiny random SigLIP vision model (32 px, 8 px patches, no CLS token) with SigLIP's 0.5 mean/std."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    folder = tmp_path_factory.mktemp("tiny_siglip")
    torch.manual_seed(1)
    SiglipVisionModel(SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4)).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SiglipImageProcessor", "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
        "size": {"height": 32, "width": 32}, "resample": 3, "rescale_factor": 1 / 255}))
    return str(folder)


def test_siglip_linear_full_selection_round_trip(tiny_config, tiny_siglip, toy_data, tmp_path):
    # stage 2 trained straight away (the whole LLM tuned), stretched images, a system prompt the template adds
    checkpoint = train(tiny_config(2, f"model.vision_tower={tiny_siglip}", "model.connector=linear",
                                   "model.vision_feature_select=full", "model.image_aspect=resize",
                                   "data.system_prompt=You are a helpful assistant.", "train.max_steps=1"))
    result = export_llava(checkpoint.parent, tmp_path / "llava", dtype="fp32")
    config = json.loads((result.folder / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "siglip_vision_model"
    assert config["vision_feature_select_strategy"] == "full" and config["image_seq_length"] == 16
    assert config["projector_hidden_act"] == "relu"  # the linear map written with vLLM's activations
    assert result.notes == []
    assert "vision_tower.vision_model.embeddings.patch_embedding.weight" in read_weights(result.folder)
    processor = json.loads((result.folder / "processor_config.json").read_text())
    assert processor["num_additional_image_tokens"] == 0
    image_processor = json.loads((result.folder / "preprocessor_config.json").read_text())
    assert image_processor["image_mean"] == [0.5] * 3 and image_processor["do_pad"] is False

    wide = tmp_path / "wide.png"  # not square: stretching is reproduced exactly by the processor
    load_image(toy_data["image_root"] / "images" / "00001.png").resize((64, 40)).save(wide)
    child = assert_round_trip(result.folder, checkpoint.parent, wide, tmp_path)
    assert child["text"].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")


@pytest.fixture(scope="module")
def tiny_tied_llm(tiny_models, tmp_path_factory) -> str:
    """The tiny Llama with tied input and output embeddings (as SmolLM2, the packaged LLM), same tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_tied_llm")
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llm"])
    torch.manual_seed(2)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                 tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_stage1_only_checkpoint_exports_through_the_command(tiny_config, tiny_tied_llm, toy_data, tmp_path, capsys):
    checkpoint = train(tiny_config(1, f"model.llm={tiny_tied_llm}", "train.max_steps=2"))  # no LoRA: the base LLM
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    out = tmp_path / "llava"
    args = parser.parse_args(["export", "--checkpoint", str(checkpoint.parent), "--out", str(out), "--dtype", "fp32",
                              "--max-shard-size", "100KB"])
    args.func(args)
    assert f"wrote {out}" in capsys.readouterr().out
    index = json.loads((out / "model.safetensors.index.json").read_text())  # sharded above the size limit
    assert len(set(index["weight_map"].values())) > 1
    assert "language_model.lm_head.weight" not in index["weight_map"]  # tied: stored once, as the embeddings
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True

    image = toy_data["image_root"] / "images" / "00002.png"
    child = assert_round_trip(out, checkpoint.parent, image, tmp_path)
    assert child["text"] == "<image>" + PROMPT  # stage 1's plain layout: the image tokens, then the text


@pytest.mark.parametrize("overrides, part", [
    (("model.connector=avgpool",), "connector 'avgpool'"),
    (("model.connector=qformer",), "connector 'qformer'"),
    (("model.connector=xformer",), "connector 'xformer'"),
    (("model.connector_options={pool: 2}",), "model.connector_options pool"),
    (("model.connector_options={merge: 2}",), "model.connector_options merge"),
    (("model.connector_options={norm: true}",), "model.connector_options norm"),
    (("model.vision_tower=efficientnet-lite0",), "EfficientNet-Lite0"),
    (("model.vision_tower=timm:vit_tiny_patch16_224",), "a timm model"),
    (("model.image_aspect=crop",), "model.image_aspect 'crop'"),
])
def test_llava_format_refuses_what_it_cannot_hold(tiny_config, overrides, part):
    error = config_refusal(tiny_config(1, *overrides))
    assert isinstance(error, ConfigError)
    message = str(error)
    assert part in message and message.endswith("export it with --format remote-code instead")
    assert "\n" not in message


def test_export_command_refuses_an_avgpool_checkpoint_before_loading_it(tiny_config, tmp_path, capsys):
    checkpoint = train(tiny_config(1, "model.connector=avgpool", "train.max_steps=1"))
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    out = tmp_path / "out"
    args = parser.parse_args(["export", "--checkpoint", str(checkpoint.parent), "--out", str(out), "--format", "llava"])
    with pytest.raises(ConfigError, match=r"connector 'avgpool'.*--format remote-code"):
        args.func(args)
    assert not out.exists()
    # Without --format the command picks remote-code for it, and says why not llava
    args = parser.parse_args(["export", "--checkpoint", str(checkpoint.parent), "--out", str(out)])
    assert chosen_format(args) == "remote-code"
    assert "cannot hold the connector 'avgpool'" in capsys.readouterr().out


def test_export_refuses_to_replace_a_folder_that_is_not_an_export(tiny_config, tmp_path):
    checkpoint = train(tiny_config(1, "train.max_steps=1"))
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not an earlier llava export"):
        export_llava(checkpoint.parent, precious)
    assert (precious / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("vision_dim, text_dim, act", [(8, 16, "relu"), (12, 16, "linear")])
def test_linear_connector_is_exact_in_llavas_projector(vision_dim, text_dim, act):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    torch.manual_seed(0)
    weight, bias = torch.randn(text_dim, vision_dim), torch.randn(text_dim)
    state, got_act = linear_as_llava_projector(weight, bias)
    assert got_act == act  # ReLU (which vLLM has) whenever the LLM is at least twice as wide as the tower
    config = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=vision_dim, intermediate_size=16,
                                                        num_attention_heads=2),
                         text_config=LlamaConfig(hidden_size=text_dim, intermediate_size=32, num_attention_heads=2,
                                                 num_key_value_heads=2, num_hidden_layers=1),
                         projector_hidden_act=got_act)
    projector = LlavaMultiModalProjector(config)
    projector.load_state_dict(state)
    features = torch.randn(2, 5, vision_dim)
    with torch.no_grad():
        torch.testing.assert_close(projector(features), features @ weight.T + bias, atol=1e-5, rtol=0)


def test_wide_images_are_padded_where_vlalign_pads_them(tiny_config, tmp_path):
    """The pad geometry (centred, on the short side) matches vlalign's; only the border colour may differ by one
    grey level (int vs round of mean * 255), which the export reports as a note rather than hiding."""
    from transformers import AutoProcessor

    checkpoint = train(tiny_config(1, "train.max_steps=1"))
    result = export_llava(checkpoint.parent, tmp_path / "llava", dtype="fp32")
    processor = AutoProcessor.from_pretrained(str(result.folder))
    model, _ = load_checkpoint_model(checkpoint.parent, device="cpu")
    tall = Image.new("RGB", (20, 64), (250, 10, 10))
    ours = image_transform_for(model)(tall)
    theirs = torch.as_tensor(processor.image_processor(images=tall)["pixel_values"][0])
    centre = slice(13, 19)  # the red stripe (columns 11-21 of 32) away from the resampled edges
    torch.testing.assert_close(theirs[:, :, centre], ours[:, :, centre], atol=1e-5, rtol=0)
    border = (theirs[:, :, :8] - ours[:, :, :8]).abs().max()
    assert border < 0.02 and (border == 0 or any("pad border" in note for note in result.notes))
