"""Load a trained stage back: checkpoint folder -> model in eval mode + its run config.

Lives in the training layer because rebuilding the model needs the stage's tune recipe (LoRA layers must
exist before their weights load); evaluation, generation and the demo all load through here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlalign.config import load_config
from vlalign.errors import ConfigError
from vlalign.models.vlm import VisionLanguageModel
from vlalign.train import checkpoint as ckpt
from vlalign.train.stages import apply_tune, merge_lora


def resolve_checkpoint(folder: str | Path) -> Path:
    """Accept a stage output folder (uses its `final/`) or a checkpoint folder itself."""
    folder = Path(folder)
    for candidate in (folder, folder / "final"):
        if ckpt.is_complete(candidate):
            return candidate
    raise ConfigError(f"{folder} holds no complete vlalign checkpoint (expected model.safetensors and "
                      f"{ckpt.STATE_FILE}, or a final/ folder with them)")


def load_checkpoint_model(folder: str | Path, device: str | torch.device | None = None, merge_adapters: bool = False):
    """(model in eval mode, its run config) from a checkpoint folder; on `device`, by default the GPU
    when there is one. `merge_adapters`: fold LoRA into the base weights (inference: generation then runs
    no adapter per layer and token: 1.12x the questions per second on the demo's model on this CPU)."""
    folder = resolve_checkpoint(folder)
    config = load_config(folder / "config.yaml")
    model = VisionLanguageModel.from_config(config.model)
    apply_tune(model, config.train.stage, config.train.tune)  # recreates LoRA layers so their weights fit
    ckpt.load_weights(folder, model)
    if merge_adapters:
        merge_lora(model.language_model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval().requires_grad_(False), config


def checkpoint_fingerprint(folder: Path) -> str:
    """Size and modification time of a checkpoint's weights: answers saved for one set of weights are not
    reused for another written to the same folder later."""
    stat = (Path(folder) / ckpt.WEIGHTS_FILE).stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}"
