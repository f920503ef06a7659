"""Pretrain a small Hugging Face `ViTMAEForPreTraining` on an image folder (no MAE can be downloaded here).

The result, `out/final/`, loads with `ViTMAEForPreTraining.from_pretrained` and its preprocessing with
`AutoImageProcessor.from_pretrained`. All randomness (order, flips, masks) is drawn from (seed, epoch) or
(seed, step), so an interrupted run resumed with `resume=True` ends with the same weights as one that ran
straight through.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from vlalign.data.images import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, load_image
from vlalign.errors import ConfigError, DataError
from vlalign.files import write_folder_atomically
from vlalign.mae.checkpoints import quiet_hf_progress, restore_checkpoint, save_checkpoint
from vlalign.train.checkpoint import latest_checkpoint
from vlalign.train.optim import build_scheduler
from vlalign.train.progress import StepLogger

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def find_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"image folder {folder} does not exist or is not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under it, recursively",
                        reason="no_images", file=str(folder))
    return paths


class FlippedImages(torch.utils.data.Dataset):
    """(path, flip) items -> (pixels, error). A failure comes back as a message rather than an exception,
    because DataLoader workers re-raise exceptions as bare RuntimeErrors that lose the DataError."""

    def __init__(self, items: list[tuple[Path, bool]], transform: ImageTransform):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, flip = self.items[index]
        try:
            image = load_image(path)
        except OSError as error:
            return torch.zeros(3, self.transform.size, self.transform.size), f"{path}\t{error}"
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return self.transform(image), ""


def epoch_items(paths: list[Path], seed: int, epoch: int) -> list[tuple[Path, bool]]:
    """The epoch's order and flips depend on (seed, epoch) only, so a resumed run replays them exactly."""
    rng = np.random.default_rng([seed, 0, epoch])
    order, flips = rng.permutation(len(paths)), rng.random(len(paths)) < 0.5
    return [(paths[i], bool(flips[i])) for i in order]


def step_noise(seed: int, step: int, batch: int, num_patches: int) -> torch.Tensor:
    """ViTMAE masks the patches with the lowest noise; drawing it per step keeps masks resume-proof."""
    rng = np.random.default_rng([seed, 1, step])
    return torch.from_numpy(rng.random((batch, num_patches), dtype=np.float32))


def new_model(config: ViTMAEConfig, seed: int) -> ViTMAEForPreTraining:
    torch.manual_seed(seed)
    model = ViTMAEForPreTraining(config)
    # transformers 5.x initialises children before parents: the patch projection is flagged initialised
    # first, so ViTMAEEmbeddings.initialize_weights returns early, and _init_weights then zeros the decoder's
    # position table and mask token. A from-scratch model thus has all-zero (frozen) position embeddings and
    # cannot tell patches apart. Clear the flag and rerun transformers' own sin-cos initialisers.
    embeddings = model.vit.embeddings
    embeddings.patch_embeddings.projection._is_hf_initialized = False
    embeddings.initialize_weights()
    model.decoder.initialize_weights(embeddings.patch_embeddings.num_patches)
    return model


def adamw(model, lr: float, weight_decay: float) -> torch.optim.AdamW:
    # As MAE's main_pretrain (timm add_weight_decay): no decay on biases and norms; betas (0.9, 0.95).
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def save_final(out: Path, model, image_size: int, summary: dict) -> Path:
    try:  # transformers 5 without torchvision: the PIL backend (it saves as "ViTImageProcessor" all the same)
        from transformers import ViTImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import ViTImageProcessor as ImageProcessor
    # resample 3 = bicubic, as ImageTransform; training padded non-square images, the processor stretches them.
    processor = ImageProcessor(do_resize=True, size={"height": image_size, "width": image_size}, resample=3,
                               do_rescale=True, do_normalize=True, image_mean=list(IMAGENET_MEAN),
                               image_std=list(IMAGENET_STD))

    def write(staging: Path) -> None:
        with quiet_hf_progress():
            model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
        (staging / "summary.json").write_text(json.dumps(summary, indent=2))

    return write_folder_atomically(out / "final", write)


def read_losses(metrics_file: Path, up_to_step: int | None = None) -> list[dict]:
    if not metrics_file.is_file():
        return []
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    return [row for row in rows if up_to_step is None or row["step"] <= up_to_step]


def mae_config(image_size: int, patch_size: int, hidden_size: int, num_layers: int, num_heads: int,
               intermediate_size: int, decoder_hidden_size: int, decoder_layers: int, decoder_heads: int,
               decoder_intermediate_size: int, mask_ratio: float, norm_pix_loss: bool) -> ViTMAEConfig:
    """The architecture, checked: every width divides into its heads, and masking leaves some patches."""
    if image_size % patch_size:
        raise ConfigError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    for width, heads, name in ((hidden_size, num_heads, "hidden_size"),
                               (decoder_hidden_size, decoder_heads, "decoder_hidden_size")):
        if width % heads:
            raise ConfigError(f"{name} {width} is not a multiple of its attention heads ({heads})")
    num_patches = (image_size // patch_size) ** 2
    if not 0.0 < mask_ratio < 1.0 or int(num_patches * (1 - mask_ratio)) < 1:
        raise ConfigError(f"mask_ratio {mask_ratio} must mask some but not all of the {num_patches} patches")
    return ViTMAEConfig(image_size=image_size, patch_size=patch_size, num_channels=3, hidden_size=hidden_size,
                        num_hidden_layers=num_layers, num_attention_heads=num_heads,
                        intermediate_size=intermediate_size, decoder_hidden_size=decoder_hidden_size,
                        decoder_num_hidden_layers=decoder_layers, decoder_num_attention_heads=decoder_heads,
                        decoder_intermediate_size=decoder_intermediate_size, mask_ratio=mask_ratio,
                        norm_pix_loss=norm_pix_loss)


@dataclass
class MaeRun:
    """One pre-training run: what it trains, on what, and where the loop stands (step, epoch, position)."""

    out: Path
    paths: list[Path]
    model: ViTMAEForPreTraining
    optimizer: torch.optim.Optimizer
    scheduler: object
    recipe: dict  # everything the final weights depend on; a resume with any of it changed is refused
    batch_size: int
    total_steps: int
    seed: int
    num_workers: int = 0
    step: int = 0
    epoch: int = 0
    position: int = 0  # batches done in the current epoch

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.paths) / self.batch_size)

    @property
    def num_patches(self) -> int:
        config = self.model.config
        return (config.image_size // config.patch_size) ** 2


def _resume(run: MaeRun, resume: bool) -> None:
    latest = latest_checkpoint(run.out)
    if latest is not None and not resume:
        raise ConfigError(f"{run.out} holds checkpoints of an earlier run ({latest.name}); pass "
                          "resume=True (--resume) to continue it, or choose another folder")
    if latest is not None:
        state = restore_checkpoint(latest, run.model, run.optimizer, run.scheduler, run.recipe)
        run.step, run.epoch, run.position = state["step"], state["epoch"], state["position"]
    run.out.mkdir(parents=True, exist_ok=True)
    # Rows logged after the checkpoint (by the interrupted run) would be logged again: drop them.
    metrics_file = run.out / "metrics.jsonl"
    kept_rows = read_losses(metrics_file, up_to_step=run.step)
    metrics_file.write_text("".join(json.dumps(row) + "\n" for row in kept_rows))


def _train_step(run: MaeRun, pixels: torch.Tensor, logger: StepLogger) -> float:
    lr_now = run.scheduler.get_last_lr()[0]  # logged: the rate this step used
    loss = run.model(pixel_values=pixels, noise=step_noise(run.seed, run.step, len(pixels), run.num_patches)).loss
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.scheduler.step()
    run.step, run.position = run.step + 1, run.position + 1
    if run.position == run.steps_per_epoch:
        run.epoch, run.position = run.epoch + 1, 0
    logger.accumulate(loss, {}, {}, len(pixels))
    logger.step_done(run.step, lr_now)
    return loss.item()


def _train(run: MaeRun, logger: StepLogger, save_every: int | None, on_step) -> int:
    """Steps until the last; returns how many images this call trained on."""
    transform = ImageTransform(run.model.config.image_size, IMAGENET_MEAN, IMAGENET_STD, aspect="pad")
    images_seen = 0
    run.model.train()
    while run.step < run.total_steps:
        items = epoch_items(run.paths, run.seed, run.epoch)[run.position * run.batch_size:]
        loader = torch.utils.data.DataLoader(FlippedImages(items, transform), batch_size=run.batch_size,
                                             shuffle=False, num_workers=run.num_workers)
        for pixels, errors in loader:
            failed = next((error for error in errors if error), None)
            if failed:
                path, message = failed.split("\t", 1)
                raise DataError(message, reason="unreadable_image", file=path)
            loss = _train_step(run, pixels, logger)
            images_seen += len(pixels)
            if save_every and run.step % save_every == 0 and run.step < run.total_steps:
                save_checkpoint(run.out, run.model, run.optimizer, run.scheduler,
                                {"step": run.step, "epoch": run.epoch, "position": run.position, "recipe": run.recipe})
            if on_step is not None:
                on_step(run.step, loss)
            if run.step >= run.total_steps:
                break
    return images_seen


def pretrain_mae(images: str | Path, out: str | Path, *, image_size: int = 224, patch_size: int = 16,
                 hidden_size: int = 192, num_layers: int = 4, num_heads: int = 3, intermediate_size: int = 768,
                 decoder_hidden_size: int = 128, decoder_layers: int = 2, decoder_heads: int = 4,
                 decoder_intermediate_size: int = 512, mask_ratio: float = 0.75, norm_pix_loss: bool = True,
                 epochs: int = 10, max_steps: int | None = None, batch_size: int = 32, lr: float = 1e-3,
                 weight_decay: float = 0.05, warmup_ratio: float = 0.05, save_every: int | None = None,
                 seed: int = 0, resume: bool = False, progress: bool = True, num_workers: int = 0,
                 on_step: Callable[[int, float], None] | None = None) -> Path:
    """Train and write `out/final/`; returns it. `lr` defaults to 1e-3, not MAE's 1.5e-4 * batch / 256
    (= 1.9e-5 at batch 32): that rule was tuned for ViT-B/L over 800+ epochs at batch 4096, and leaves a
    4-layer, 192-wide model barely moving in a few thousand steps. `on_step(step, loss)` runs after each
    step (and its checkpoint); an exception from it stops the run, which `resume=True` then continues."""
    out, paths = Path(out), find_images(images)
    config = mae_config(image_size, patch_size, hidden_size, num_layers, num_heads, intermediate_size,
                        decoder_hidden_size, decoder_layers, decoder_heads, decoder_intermediate_size, mask_ratio,
                        norm_pix_loss)
    total_steps = max_steps if max_steps is not None else epochs * math.ceil(len(paths) / batch_size)
    if total_steps < 1:
        raise ConfigError(f"nothing to train: max_steps={max_steps}, epochs={epochs}")
    architecture = {k: v for k, v in config.to_diff_dict().items() if k != "transformers_version"}
    recipe = json.loads(json.dumps({  # the form a checkpoint's JSON gives back
        "images": len(paths), "config": architecture, "total_steps": total_steps, "batch_size": batch_size,
        "lr": lr, "weight_decay": weight_decay, "warmup_ratio": warmup_ratio, "seed": seed}))
    model = new_model(config, seed)
    optimizer = adamw(model, lr, weight_decay)
    run = MaeRun(out, paths, model, optimizer, build_scheduler(optimizer, warmup_ratio, total_steps), recipe,
                 batch_size, total_steps, seed, num_workers)
    _resume(run, resume)
    started, start_step = time.perf_counter(), run.step
    logger = StepLogger(None, out, total_steps, run.step, desc="pretrain-mae", progress=progress)
    try:
        images_seen = _train(run, logger, save_every, on_step)
    finally:
        logger.close()
    seconds, losses = time.perf_counter() - started, read_losses(out / "metrics.jsonl")
    summary = {"images": len(paths), "steps": total_steps, "steps_this_run": run.step - start_step,
               "resumed_from_step": start_step or None, "first_loss": losses[0]["loss"],
               "last_loss": losses[-1]["loss"], "seconds": round(seconds, 3),
               "images_per_s": round(images_seen / seconds, 2) if seconds > 0 else None,
               "image_aspect": "pad", "recipe": recipe}
    return save_final(out, model, image_size, summary)
