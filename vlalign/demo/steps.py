"""The demo's building blocks: train one stage from a preset, the demo dual encoder, SEA's patch labels and
the demo MAE, each reused when an earlier call into the same folder made it with the same settings."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import torch

from vlalign.config import load_config
from vlalign.demo.presets import CONFIGS, Preset
from vlalign.dual_encoder.labeller import collect_images, label_images, load_encoder
from vlalign.dual_encoder.train import train_dual_encoder
from vlalign.errors import ConfigError
from vlalign.labels.words import resolve_words
from vlalign.mae.pretrain import pretrain_mae
from vlalign.train.loop import train

SETTINGS_FILE = "demo_settings.json"


def training_precision() -> str:
    """bf16 autocast where the hardware runs it natively (1.45x faster stage-2 steps on this CPU), else fp32:
    emulated bf16 on an older CPU would be slower than fp32."""
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"


def inference_autocast():
    """The demo evaluates under the autocast it trains with: bf16 where native (1.5x the questions per second of
    fp32 on this CPU; 62 of 64 greedy answers identical on the demo's GQA questions), else fp32."""
    if training_precision() != "bf16":
        return contextlib.nullcontext()
    return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16)


def train_stage(preset_file: str, patches: list[dict]) -> tuple[Path, float]:
    """One training stage from a preset in configs/ and the run's patches; (final checkpoint, seconds)."""
    started = time.perf_counter()
    config = load_config(CONFIGS / preset_file, patches=patches)
    # The demo owns its stage folders and retrains a stage from scratch on every call (it never resumes one):
    # an earlier call's files there are its own earlier result, replaced.
    shutil.rmtree(config.train.output_dir, ignore_errors=True)
    final = train(config)
    return final, time.perf_counter() - started


def stage_summary(output_dir: Path, seconds: float) -> dict:
    metrics = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return {"steps": metrics[-1]["step"], "first_loss": metrics[0]["loss"], "last_loss": metrics[-1]["loss"],
            "seconds": seconds}


def saved_settings(folder: Path, settings: dict) -> dict | None:
    """What an earlier demo run recorded in `folder` when it made that folder's model with these same
    `settings` (it may add more, e.g. its time); None when it made it otherwise or not at all."""
    path = folder / SETTINGS_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {}
    return saved if saved and {key: saved.get(key) for key in settings} == settings else None


def dual_encoder(world: Path, folder: Path, preset: Preset, seed: int) -> dict:
    """Train the demo dual encoder, or reuse the one a previous demo run left for the same world."""
    started = time.perf_counter()
    report_path = folder / "report.json"
    settings = {"epochs": preset.dual_encoder_epochs, "seed": seed,
                "world": json.loads((world / "manifest.json").read_text())}
    saved = saved_settings(folder, settings)
    if report_path.is_file() and saved is not None:
        print(f"[demo] reusing the dual encoder in {folder}")
        report = json.loads(report_path.read_text())
        seconds, reused = saved.get("seconds", 0.0), True
    else:
        report = train_dual_encoder(world / "stage1.json", world, folder, epochs=preset.dual_encoder_epochs, seed=seed,
                                    test_json=world / "test" / "captions.json")
        seconds, reused = time.perf_counter() - started, False
        (folder / SETTINGS_FILE).write_text(json.dumps({**settings, "seconds": seconds}))
    return {"retrieval": report["test"]["retrieval"], "modality_gap": report["test"]["modality_gap"],
            "seconds": seconds, "reused": reused}


def patch_labels(world: Path, out: Path, image_aspect: str, words_spec: str | None = None) -> tuple[Path, dict]:
    """SEA's offline step: the demo dual encoder labels the world's training images (reused when done).

    Words: Debian's English list plus the world's vocabulary (the default of `vlalign label-patches`), or
    the vocabulary alone where the English list is not installed. The folder is keyed by the encoder's
    fingerprint and the word source, so a retrained encoder or another list never reuses stale labels.
    """
    try:
        words, source = resolve_words(words_spec, world)
    except ConfigError as exc:
        print(f"[demo] SEA labels from the shapes vocabulary only ({exc})")
        words, source = resolve_words("shapes", world)
    encoder_folder = out / "dual_encoder"
    encoder, fingerprint = load_encoder(str(encoder_folder))
    folder = out / "sea_labels" / f"{fingerprint[:12]}-{source.replace('+', '_')}"
    summary = label_images(encoder, collect_images(world / "stage1.json", world), words, folder,
                           encoder_id=str(encoder_folder), fingerprint=fingerprint, image_aspect=image_aspect)
    print(f"[demo] SEA labels: {folder} ({len(words)} words, {source})")
    return folder, summary


def demo_mae(world: Path, out: Path, epochs: int, seed: int) -> tuple[Path, dict]:
    """A small MAE pre-trained on the world's training images (reused when the settings match)."""
    folder = out / "mae"
    settings = {"epochs": epochs, "seed": seed, "world": json.loads((world / "manifest.json").read_text())["params"]}
    summary_file = folder / "final" / "summary.json"
    if summary_file.is_file() and saved_settings(folder, settings) is not None:
        print(f"[demo] reusing the MAE in {folder}")
        return folder / "final", {**json.loads(summary_file.read_text()), "reused": True}
    if folder.exists():
        shutil.rmtree(folder)  # other settings: its checkpoints must not be resumed
    final = pretrain_mae(world / "images" / "train", folder, epochs=epochs, seed=seed)
    (folder / SETTINGS_FILE).write_text(json.dumps(settings))
    return final, json.loads((final / "summary.json").read_text())
