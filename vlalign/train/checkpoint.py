"""Checkpoints: what a stage produced (trainable weights, config, tokenizer) and how to resume it exactly.

Layout of a checkpoint folder:
  model.safetensors     weights that are not in the base sources: connector, trainable parts (LoRA, full
                        LLM, tuned tower) and objective parameters (`objectives.*`), LLaVA-style names
  config.yaml           resolved run config;  tokenizer/  the tokenizer with `<image>`
  trainer_state.json    step, epoch, position in the epoch, recipe
  optimizer.pt, scheduler.pt, rng_<rank>.pt   only in resumable `checkpoint-<step>` folders
Writes go to a temporary sibling folder that is renamed into place last, so a crash never leaves a
folder that looks complete: a folder counts only if it holds trainer_state.json (written last).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vlalign.config import RunConfig, dump_config
from vlalign.distributed import gather_objects
from vlalign.errors import ConfigError, TrainingError
from vlalign.files import publish_folder, staging_folder
from vlalign.train.run_folder import run_id_of

STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def saved_parameter_ids(model) -> set[int]:
    """Which of the model's parameters a checkpoint holds: every trainable one, LoRA's, and the whole
    connector (it exists in no base source) except what the connector declares it reloads from a source
    of its own (`Connector.source_modules`, e.g. X-Former's frozen MAE)."""
    kept = set()
    connector = getattr(model, "multi_modal_projector", None)  # any module saves its trainable weights
    if connector is not None:
        sourced = {id(p) for module in connector.source_modules() for p in module.parameters() if not p.requires_grad}
        kept = {id(p) for p in connector.parameters() if id(p) not in sourced}
    kept |= {id(p) for name, p in model.named_parameters() if p.requires_grad or "lora_" in name}
    return kept


def weights_to_save(model, objectives, gathered: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Weights not in the base sources. `gathered`: a full state dict of the TrainingModule, needed when
    FSDP / ZeRO-3 shard parameters (the local tensors are then only shards)."""
    named, saved = {}, saved_parameter_ids(model)
    for name, param in model.named_parameters():
        if id(param) in saved:
            named[name] = gathered[f"model.{name}"] if gathered is not None else param
    for name, param in objectives.named_parameters():
        named[f"objectives.{name}"] = gathered[f"objectives.{name}"] if gathered is not None else param
    # Tied weights (embeddings = LM head) share storage; safetensors stores each storage once.
    seen, state = set(), {}
    for name, tensor in named.items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            state[name] = tensor.detach().to("cpu").contiguous()
    return state


def _gathered_state(accelerator, wrapped) -> dict[str, torch.Tensor] | None:
    """Full parameters from every rank under FSDP / DeepSpeed (a collective: all ranks call it)."""
    if wrapped is None or accelerator.distributed_type.value not in ("FSDP", "DEEPSPEED"):
        return None
    return accelerator.get_state_dict(wrapped)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(target: str | Path, accelerator, *, model, objectives, config: RunConfig, state: dict,
                    optimizer=None, scheduler=None, wrapped=None, rank_state: dict | None = None) -> Path:
    """Atomically write a checkpoint; with optimizer/scheduler it is resumable. All ranks must call it.

    `wrapped`: the prepared TrainingModule, from which sharded (FSDP / ZeRO-3) weights are gathered.
    `rank_state`: this rank's own counters (skips, truncations), stored beside its RNG state."""
    target = Path(target)
    gathered = _gathered_state(accelerator, wrapped)
    weights = weights_to_save(model, objectives, gathered) if accelerator.is_main_process else {}
    # Never publish non-finite weights as a checkpoint (every rank learns it, so none waits at a barrier).
    bad = [name for name, tensor in weights.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    bad = [name for names in gather_objects([bad]) for name in names]
    if bad:
        raise TrainingError(f"not writing {target}: {len(bad)} weight tensors hold NaN or inf ({', '.join(bad[:3])})")
    staging = staging_folder(target)
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()  # the staging folder exists before any rank writes into it
    resumable = optimizer is not None
    if resumable:
        torch.save({"rng": _rng_state(), **(rank_state or {})}, staging / f"rng_{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_file(weights, str(staging / WEIGHTS_FILE))
        dump_config(config, staging / "config.yaml")
        model.tokenizer.save_pretrained(str(staging / "tokenizer"))
        if resumable:
            torch.save(optimizer.state_dict(), staging / "optimizer.pt")
            torch.save(scheduler.state_dict(), staging / "scheduler.pt")
    # Every rank's own files (rng_<rank>.pt) must be in the staging folder before the main process marks it
    # complete and renames it into place: otherwise a slower rank writes into a folder that is already gone
    # (it fails and the main process dies in the next barrier), or a crash leaves a "complete" checkpoint
    # without that rank's RNG state.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        fault_point("before_state")
        (staging / STATE_FILE).write_text(json.dumps(state, indent=2))
        publish_folder(staging, target)
    accelerator.wait_for_everyone()
    return target


def fault_point(name: str) -> None:
    """Crash on purpose where VLALIGN_FAULT names this point (used by the crash-safety tests)."""
    if os.environ.get("VLALIGN_FAULT") == name:
        os._exit(17)


def is_complete(folder: Path) -> bool:
    return (folder / STATE_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def complete_checkpoints(output_dir: str | Path, run_id: str | None = None) -> list[Path]:
    """Complete `checkpoint-<step>` folders, oldest first; with `run_id`, only that run's (and those written
    before checkpoints carried a run id)."""
    found = []
    for folder in Path(output_dir).glob("checkpoint-*"):
        match = CHECKPOINT_PATTERN.match(folder.name)
        if match and is_complete(folder) and (run_id is None or run_id_of(folder) in (run_id, None)):
            found.append((int(match.group(1)), folder))
    return [folder for _, folder in sorted(found)]


def latest_checkpoint(output_dir: str | Path, run_id: str | None = None) -> Path | None:
    found = complete_checkpoints(output_dir, run_id)
    return found[-1] if found else None


def prune_checkpoints(output_dir: str | Path, keep: int, run_id: str | None = None) -> None:
    """Delete all but the newest `keep` complete checkpoints (of `run_id` only, when given)."""
    found = complete_checkpoints(output_dir, run_id)
    for folder in found[:-keep] if keep > 0 else []:
        shutil.rmtree(folder, ignore_errors=True)


def load_weights(folder: str | Path, model, objectives=None, *, only_prefix: str | None = None) -> list[str]:
    """Load saved weights by name; every saved name must exist in the model. Returns the loaded names."""
    folder = Path(folder)
    if not (folder / WEIGHTS_FILE).is_file():
        raise ConfigError(f"{folder} is not a vlalign checkpoint (no {WEIGHTS_FILE})")
    saved = load_file(str(folder / WEIGHTS_FILE))
    model_state, objective_state = {}, {}
    for name, tensor in saved.items():
        if only_prefix and not name.startswith(only_prefix):
            continue
        if name.startswith("objectives."):
            objective_state[name[len("objectives."):]] = tensor
        else:
            model_state[name] = tensor
    _load_named(model, model_state, folder)
    if objectives is not None and objective_state:
        _load_named(objectives, objective_state, folder)
    return sorted(model_state) + sorted(f"objectives.{k}" for k in objective_state)


def _load_named(module, state: dict, folder: Path) -> None:
    own = dict(module.named_parameters())
    unknown = [name for name in state if name not in own]
    if unknown:
        raise ConfigError(f"checkpoint {folder} has weights this model lacks (different connector, LoRA or "
                          f"objective config?): {unknown[:5]}")
    for name, tensor in state.items():
        if own[name].shape != tensor.shape:
            raise ConfigError(f"checkpoint {folder}: {name} has shape {tuple(tensor.shape)}, model expects "
                              f"{tuple(own[name].shape)}")
        with torch.no_grad():
            own[name].copy_(tensor.to(own[name].dtype))


def restore_training_state(folder: str | Path, accelerator, optimizer, scheduler) -> tuple[dict, dict]:
    """Restores optimizer, scheduler and this rank's RNG; returns (shared state, this rank's counters)."""
    folder = Path(folder)
    missing = [name for name in ("optimizer.pt", "scheduler.pt") if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"--resume {folder}: it holds weights but no {' / '.join(missing)} (a final or exported "
                          f"model, not a resumable checkpoint-<step>); start a new run with train.init_from={folder}")
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=False))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", map_location="cpu", weights_only=False))
    rng_file = folder / f"rng_{accelerator.process_index}.pt"
    if not rng_file.is_file():
        raise ConfigError(f"{folder} was saved with a different number of processes (no {rng_file.name})")
    rank_state = torch.load(rng_file, map_location="cpu", weights_only=False)
    _set_rng_state(rank_state.pop("rng"))
    return json.loads((folder / STATE_FILE).read_text()), rank_state
