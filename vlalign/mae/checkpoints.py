"""Resumable checkpoints of an MAE pretraining run, written so that a crash never leaves a half folder.

Layout of `out/checkpoint-<step:06d>/`:
  config.json, model.safetensors   `save_pretrained` of the ViTMAEForPreTraining
  optimizer.pt, scheduler.pt, rng.pt
  trainer_state.json               step, epoch, position, recipe; written last, so it marks a complete folder
The names are those of vlalign.train.checkpoint, whose listing and pruning of complete checkpoints serve here.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging
from transformers import ViTMAEForPreTraining

from vlalign.errors import ConfigError
from vlalign.files import write_folder_atomically
from vlalign.train.checkpoint import STATE_FILE, prune_checkpoints

KEEP_CHECKPOINTS = 2


@contextlib.contextmanager
def quiet_hf_progress():
    """save_pretrained draws a 'Writing model shards' bar per save, which would interleave with ours."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def save_checkpoint(out: Path, model, optimizer, scheduler, state: dict) -> Path:
    def write(staging: Path) -> None:
        with quiet_hf_progress():
            model.save_pretrained(staging, safe_serialization=True)
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        torch.save({"torch": torch.get_rng_state()}, staging / "rng.pt")
        (staging / STATE_FILE).write_text(json.dumps(state, indent=2))

    target = write_folder_atomically(out / f"checkpoint-{state['step']:06d}", write)
    prune_checkpoints(out, KEEP_CHECKPOINTS)
    return target


def load_saved_model(folder: Path):
    """from_pretrained, never the raw safetensors: transformers 5.x renames ViTMAE's modules
    (vit.layers.0.attention.q_proj) but saves under the hub's old names (vit.encoder.layer.0.attention.
    attention.query) and maps them back on load. A key it cannot place would be initialised at random
    with only a warning, so any missing or unexpected key is an error here."""
    with quiet_hf_progress():
        model, info = ViTMAEForPreTraining.from_pretrained(folder, output_loading_info=True)
    problems = {kind: keys for kind, keys in info.items() if keys and kind != "error_msgs"}
    if problems:
        raise ConfigError(f"checkpoint {folder} does not match the model: {problems}")
    return model


def restore_checkpoint(folder: Path, model, optimizer, scheduler, recipe: dict) -> dict:
    """Load weights, optimizer, scheduler and RNG in place; refuse a checkpoint of a different recipe,
    since continuing it with other settings would silently give a run nobody asked for."""
    state = json.loads((folder / STATE_FILE).read_text())
    changed = {key: (state["recipe"].get(key), value) for key, value in recipe.items()
               if state["recipe"].get(key) != value}
    if changed:
        details = ", ".join(f"{key}: checkpoint {old!r} vs now {new!r}" for key, (old, new) in changed.items())
        raise ConfigError(f"cannot resume from {folder}: settings differ ({details}); use the same settings "
                          "or another --out folder")
    model.load_state_dict(load_saved_model(folder).state_dict(), strict=True)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=False))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", map_location="cpu", weights_only=False))
    torch.set_rng_state(torch.load(folder / "rng.pt", map_location="cpu", weights_only=False)["torch"])
    return state
