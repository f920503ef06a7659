"""Everything about a run config that can be checked without loading a weight, in about a second.

`load_config` (the bottom layer) validates each section's types; this adds what needs the registries:
objective options and unique term names, connector options, the sample layout the objectives' fields
need, and the cross-section rules objectives declare (`Objective.requires`). `train()` and `vlalign info`
run it first, so a wrong combination fails before a 7B LLM loads, not after.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import torch

from vlalign.config import RunConfig
from vlalign.data.samples import resolve_layout
from vlalign.errors import ConfigError
from vlalign.models.connectors import connector_class, connector_options
from vlalign.objectives import Requires, merged_sample_fields, resolved_objectives
from vlalign.train.checkpoint import WEIGHTS_FILE
from vlalign.train.stages import resolve_tune


def check_config(config: RunConfig) -> None:
    resolved = resolved_objectives(config.objectives)
    connector_options(config.model.connector, config.model.connector_options)
    for name, (cls, _) in resolved.items():  # first: these errors name the objective and say why
        check_requires(name, cls.requires, config)
    resolve_layout(config.data.format, merged_sample_fields(config.objectives))
    check_throughput_options(config, resolved)


def check_throughput_options(config: RunConfig, resolved: dict) -> None:
    """Packing, cached tower features and visual-token drop, where they cannot work, are errors saying why."""
    without_llm = [name for name, (cls, _) in resolved.items() if not cls.forward_request.run_llm]
    tower = resolve_tune(config.train.stage, config.train.tune)["vision"]
    if config.data.packing and without_llm:
        raise ConfigError(f"data.packing packs LLM sequences, but objective(s) {without_llm} run no LLM pass "
                          f"(their text goes through the query former, one caption per image); unset data.packing")
    drop = config.train.visual_token_drop
    if drop and config.train.stage != 1:
        raise ConfigError(f"train.visual_token_drop: {drop} applies to stage 1 (alignment) only; stage 2 learns "
                          f"to answer from every visual token")
    if drop and without_llm:
        raise ConfigError(f"train.visual_token_drop shortens the LLM's input, but objective(s) {without_llm} run "
                          f"no LLM pass")
    if config.data.cache_vision_features:
        if tower != "frozen":
            raise ConfigError(f"data.cache_vision_features needs a frozen vision tower; stage {config.train.stage} "
                              f"trains it (train.tune.vision: {tower}), so its features change every step")
        if connector_class(config.model.connector).reads_pixels:
            raise ConfigError(f"data.cache_vision_features: connector {config.model.connector!r} reads the "
                              f"pixels too (its own image branch), so the images must still be decoded every step")


def check_requires(name: str, requires: Requires, config: RunConfig) -> None:
    """One objective's declared rules against the config; the first broken one is an error saying why."""
    why = f" ({requires.why})" if requires.why else ""
    if requires.data_format and config.data.format != requires.data_format:
        raise ConfigError(f"objective {name!r} needs data.format: {requires.data_format}, got "
                          f"{config.data.format!r}{why}")
    llm = resolve_tune(config.train.stage, config.train.tune)["llm"]
    if requires.frozen_llm and llm != "frozen":
        raise ConfigError(f"objective {name!r} needs a frozen LLM (train.tune.llm: frozen), but stage "
                          f"{config.train.stage} trains it ({llm}){why}")
    connector = config.model.connector
    if requires.connectors and connector not in requires.connectors:
        raise ConfigError(f"objective {name!r}: set model.connector: {' or '.join(requires.connectors)}, not "
                          f"{connector!r}{why}")
    kind = connector_class(connector).kind
    if requires.connector_kind and kind != requires.connector_kind:
        raise ConfigError(f"objective {name!r} needs a {requires.connector_kind} connector; model.connector "
                          f"{connector!r} is a {kind} connector{why}")


def check_run_paths(config: RunConfig) -> None:
    """What a training run reads and writes, before any weights load: the data file and image folder exist,
    `init_from` is a checkpoint, the output folder can be written; fp16 needs a GPU (on a CPU it would be
    ignored, silently training in fp32). Stage 2 without `init_from` is allowed (single-stage recipes) but said."""
    data, train = config.data, config.train
    if not data.train_file:
        raise ConfigError("data.train_file is not set (a LLaVA-format JSON / JSONL file)")
    if not Path(data.train_file).is_file():
        raise ConfigError(f"data.train_file {data.train_file} does not exist")
    if data.image_root and not Path(data.image_root).is_dir():
        raise ConfigError(f"data.image_root {data.image_root} is not a folder")
    if train.init_from and not (Path(train.init_from) / WEIGHTS_FILE).is_file():
        # the folder itself, as checkpoint.load_weights reads it (a stage folder's final/ is not looked into)
        raise ConfigError(f"train.init_from {train.init_from} holds no vlalign checkpoint (no {WEIGHTS_FILE})")
    if train.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision: fp16 needs a CUDA GPU (this machine has none: it would train in "
                          "fp32 without a word); use bf16 or no")
    _check_writable(Path(train.output_dir))
    if train.stage == 2 and not train.init_from:
        print("[vlalign] note: stage 2 without train.init_from: the connector starts from random weights")


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        os.remove(probe)
    except OSError as error:
        raise ConfigError(f"train.output_dir {folder} cannot be written: {error.strerror or error}") from None
