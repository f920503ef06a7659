"""`vlalign pretrain-mae`: a tiny ViT-MAE learns, saves HF folders, resumes exactly, and fails clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlalign.cli import main
from vlalign.errors import ConfigError, DataError
from vlalign.data.images import IMAGENET_MEAN
from vlalign.mae.pretrain import pretrain_mae

# 32 px, 8 px patches = 16 patches, 4 kept at mask ratio 0.75: milliseconds per step on a CPU.
TINY = dict(image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
            decoder_hidden_size=32, decoder_layers=1, decoder_heads=2, decoder_intermediate_size=64,
            batch_size=4, progress=False)


def write_shapes(folder: Path, count: int, seed: int = 0) -> Path:
    """Coloured rectangles on flat backgrounds: structure a decoder can learn to fill in. Mixed sizes and
    formats, one in a subfolder, so padding, .jpg and recursion are exercised too."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        width, height = (40, 32) if index % 3 else (32, 32)
        pixels = np.empty((height, width, 3), dtype=np.uint8)
        pixels[:] = rng.integers(0, 256, 3)
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        pixels[top:top + height // 2, left:left + width // 2] = rng.integers(0, 256, 3)
        target = folder / ("nested" if index == 0 else "") / f"image_{index:02d}.{'jpg' if index == 1 else 'png'}"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(target)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("shapes"), 10)


def test_loss_falls_and_final_folder_loads_with_hf_auto_classes(shapes_folder, tmp_path):
    from transformers import AutoImageProcessor, ViTMAEForPreTraining

    final = pretrain_mae(shapes_folder, tmp_path / "run", max_steps=80, lr=3e-3, seed=0, **TINY)
    assert final == tmp_path / "run" / "final"
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 80
    # Averages over 10 steps: single steps jump with the random masks.
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses

    model = ViTMAEForPreTraining.from_pretrained(final)
    assert model.config.image_size == 32 and model.config.patch_size == 8 and model.config.mask_ratio == 0.75
    # transformers 5.x leaves these zero on a fresh model; the saved ones must be the sin-cos tables.
    assert model.vit.embeddings.position_embeddings.abs().sum() > 0
    assert model.decoder.decoder_pos_embed.abs().sum() > 0
    processor = AutoImageProcessor.from_pretrained(final)
    assert (processor.size["height"], processor.size["width"]) == (32, 32)
    assert tuple(processor.image_mean) == pytest.approx(IMAGENET_MEAN)
    pixels = processor(images=Image.new("RGB", (32, 32), "red"), return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 32, 32)
    summary = json.loads((final / "summary.json").read_text())
    assert summary["images"] == 10 and summary["steps"] == 80
    assert summary["first_loss"] == losses[0] and summary["last_loss"] == losses[-1]
    assert summary["images_per_s"] > 0


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_weights(shapes_folder, tmp_path):
    # 10 images at batch 4 = 3 steps per epoch, so the checkpoint at step 4 sits mid-epoch.
    settings = dict(max_steps=8, save_every=2, lr=3e-3, seed=3, **TINY)
    straight = pretrain_mae(shapes_folder, tmp_path / "straight", **settings)

    def stop_after_step_5(step: int, loss: float) -> None:
        if step == 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        pretrain_mae(shapes_folder, tmp_path / "resumed", on_step=stop_after_step_5, **settings)
    kept = sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint-*"))
    assert kept == ["checkpoint-000002", "checkpoint-000004"]
    with pytest.raises(ConfigError, match="resume"):
        pretrain_mae(shapes_folder, tmp_path / "resumed", **settings)
    with pytest.raises(ConfigError, match="lr"):
        pretrain_mae(shapes_folder, tmp_path / "resumed", resume=True, **{**settings, "lr": 1e-3})

    resumed = pretrain_mae(shapes_folder, tmp_path / "resumed", resume=True, **settings)
    from safetensors.torch import load_file

    expected, actual = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    def logged(folder):  # what was learned at each step (samples_per_s is a timing, different every run)
        rows = [json.loads(line) for line in (tmp_path / folder / "metrics.jsonl").read_text().splitlines()]
        return [{key: row[key] for key in ("step", "loss", "lr")} for row in rows]

    rows, straight_rows = logged("resumed"), logged("straight")
    assert rows == straight_rows and [row["step"] for row in rows] == list(range(1, 9))
    assert json.loads((resumed / "summary.json").read_text())["resumed_from_step"] == 4
    assert sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint-*")) == ["checkpoint-000004",
                                                                                   "checkpoint-000006"]


def test_empty_folder_and_unreadable_image_name_the_culprit(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no pictures here")
    with pytest.raises(DataError, match=str(empty)):
        pretrain_mae(empty, tmp_path / "out", **TINY)
    with pytest.raises(ConfigError, match="does not exist"):
        pretrain_mae(tmp_path / "missing", tmp_path / "out", **TINY)

    broken = write_shapes(tmp_path / "broken", 3)
    (broken / "zz_corrupt.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="zz_corrupt.png"):
        pretrain_mae(broken, tmp_path / "out", max_steps=2, **TINY)


def test_cli_help_and_tiny_run(shapes_folder, tmp_path, capsys):
    done = subprocess.run([sys.executable, "-m", "vlalign", "pretrain-mae", "--help"], capture_output=True,
                          text=True, check=True)
    assert "--images" in done.stdout and "--resume" in done.stdout and "--mask-ratio" in done.stdout

    out = tmp_path / "cli_run"
    code = main(["pretrain-mae", "--images", str(shapes_folder), "--out", str(out), "--image-size", "32",
                 "--patch-size", "8", "--hidden-size", "32", "--layers", "1", "--heads", "2",
                 "--intermediate-size", "64", "--decoder-hidden-size", "32", "--decoder-layers", "1",
                 "--max-steps", "3", "--batch-size", "4", "--save-every", "2", "--no-progress"])
    assert code == 0
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "preprocessor_config.json").is_file()
    assert "wrote" in capsys.readouterr().out
    assert main(["pretrain-mae", "--images", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
