"""Typed run configuration: YAML presets + `--set key=value` overrides, validated, dumped into each run.

Every section forbids unknown keys, and the error lists the valid ones, so a typo such as
`train.lr_rate` fails at start instead of silently training with the default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlalign.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    # Sources: a hub id or local folder, `timm:<name>[@weights]`, a .gguf file, or a packaged alias.
    vision_tower: str = "efficientnet-lite0"
    llm: str = "smollm2-135m"
    # Hidden layer of an HF vision tower to read (LLaVA-1.5: -2, the penultimate layer).
    vision_feature_layer: int = -2
    # "patch" drops CLS/register tokens (LLaVA-1.5 'default'); "full" keeps them.
    vision_feature_select: Literal["patch", "full"] = "patch"
    # CNN/timm towers: read this intermediate stage instead of the final features (None: final).
    vision_feature_stage: int | None = None
    image_size: int | None = None  # None: the tower's own size
    image_aspect: Literal["pad", "resize", "crop"] = "pad"  # LLaVA-1.5 pads to square
    connector: str = "mlp2x_gelu"
    connector_options: dict[str, Any] = Field(default_factory=dict)
    image_token: str = "<image>"
    max_length: int = 2048
    gradient_checkpointing: bool = False
    # Attention kernel for the LLM ("sdpa", "eager", "flash_attention_2", ...).
    attn_implementation: str = "sdpa"


class DataConfig(Section):
    train_file: str | None = None
    image_root: str | None = None  # image paths in the JSON are relative to this
    # "plain": LLaVA stage-1 (image tokens + caption); "chat": the LLM's own chat template.
    format: Literal["plain", "chat"] = "plain"
    on_error: Literal["raise", "skip"] = "raise"
    group_by_length: bool = True
    num_workers: int = 0
    system_prompt: str | None = None  # None: whatever the chat template adds by itself
    chat_template: str | None = None  # Jinja text or a file; None: the tokenizer's own template


class LoraConfig(Section):
    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"


class TuneConfig(Section):
    """Per-component training recipe; `None` means: the stage's default (see train/stages.py)."""

    vision: Literal["frozen", "full"] | None = None
    connector: Literal["frozen", "full"] | None = None
    llm: Literal["frozen", "full", "lora"] | None = None
    lora: LoraConfig = Field(default_factory=LoraConfig)


class TrainConfig(Section):
    stage: Literal[1, 2] = 1
    output_dir: str = "runs/stage1"
    init_from: str | None = None  # a stage-1 checkpoint to start stage 2 from
    tune: TuneConfig = Field(default_factory=TuneConfig)
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    batch_size: int = 8  # per process, per micro-step
    grad_accum: int = 1
    lr: float = 1e-3
    vision_lr: float | None = None  # SEA-PRIME tunes the tower with 2e-6
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float | None = 1.0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = 0
    log_every: int = 10
    save_every: int | None = None  # optimizer steps between resumable checkpoints
    keep_checkpoints: int = 2


class RunConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    # objective name -> {weight: float, ...objective options}; see vlalign/objectives.
    objectives: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"generative": {"weight": 1.0}})


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.lr=2e-5)")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    return key.strip().split("."), value


def _apply_override(tree: dict, section_model: type[BaseModel] | None, path: list[str], value: Any,
                    full_key: str) -> None:
    head, rest = path[0], path[1:]
    if section_model is not None and head not in section_model.model_fields:
        valid = ", ".join(sorted(section_model.model_fields))
        raise ConfigError(f"unknown config key {full_key!r}: {head!r} is not one of: {valid}")
    if not rest:
        tree[head] = value
        return
    child_model = None
    if section_model is not None:
        annotation = section_model.model_fields[head].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            child_model = annotation
    child = tree.setdefault(head, {})
    if not isinstance(child, dict):
        raise ConfigError(f"config key {full_key!r}: {head!r} holds a value, not a section")
    _apply_override(child, child_model, rest, value, full_key)


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            section = _section_at(item["loc"][:-1])
            valid = ", ".join(sorted(section.model_fields)) if section else "?"
            lines.append(f"unknown config key {key!r} (valid keys here: {valid})")
        else:
            lines.append(f"config key {key!r}: {item['msg']}")
    return f"invalid config ({source}):\n  " + "\n  ".join(lines)


def _section_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    tree: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        source = str(path)
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(tree, RunConfig, keys, value, ".".join(keys))
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def dump_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
