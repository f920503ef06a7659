"""Typed run configuration: YAML presets + `--set key=value` overrides, validated, dumped into each run.

Every section forbids unknown keys, and the error lists the valid ones, so a typo such as
`train.lr_rate` fails at start instead of silently training with the default.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlalign.errors import ConfigError


# Ranges, checked when the config loads (before any weights): a count that must be >= 1, >= 0, or a finite
# float in a range. NaN / inf are refused everywhere: they train nothing and end as NaN weights.
AtLeastOne = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
# AdamW's step size: above 1 every update overshoots any weight scale; 0 or below trains nothing (or ascends).
LearningRate = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]


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
    image_size: AtLeastOne | None = None  # None: the tower's own size
    image_aspect: Literal["pad", "resize", "crop"] = "pad"  # LLaVA-1.5 pads to square
    connector: str = "mlp2x_gelu"
    connector_options: dict[str, Any] = Field(default_factory=dict)
    image_token: str = "<image>"
    max_length: AtLeastOne = 2048
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
    num_workers: NonNegative = 0
    system_prompt: str | None = None  # None: whatever the chat template adds by itself
    chat_template: str | None = None  # Jinja text or a file; None: the tokenizer's own template
    # Padding-free batches: a batch's samples packed into rows of up to model.max_length tokens, no attention
    # across samples (vlalign.data.packing). The same samples per step, so the same loss, with less padding.
    packing: bool = False
    # A frozen tower's output per image computed once and read from a float16 memory map afterwards, by later
    # epochs, stages and runs (vlalign.data.vision_cache); folder: $VLALIGN_CACHE/vision_features by default.
    cache_vision_features: bool = False
    vision_feature_cache: str | None = None


class LoraConfig(Section):
    r: AtLeastOne = 64
    alpha: AtLeastOne = 128
    dropout: Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)] = 0.05
    target_modules: list[str] | str = "all-linear"


class TuneConfig(Section):
    """Per-component training recipe; `None` means: the stage's default (see train/stages.py)."""

    vision: Literal["frozen", "full"] | None = None
    connector: Literal["frozen", "full"] | None = None
    llm: Literal["frozen", "full", "lora"] | None = None
    lora: LoraConfig = Field(default_factory=LoraConfig)


class BenchmarkSetConfig(Section):
    """One benchmark to evaluate on during training (the arguments of `vlalign eval benchmarks`)."""

    benchmark: str  # pope, mme, scienceqa, gqa, ... (vlalign.eval.benchmarks.catalog)
    data: str
    image_root: str | None = None
    split: str | None = None
    scoring: Literal["official", "lmms-eval"] = "official"


class TrainEvalConfig(Section):
    """Evaluation on the live model while it trains (`vlalign train` runs it; LoRA active, no second copy)."""

    benchmarks: list[BenchmarkSetConfig] = Field(default_factory=list)
    every: AtLeastOne | None = None  # optimizer steps between evaluations; always after the last step
    limit: AtLeastOne | None = 100  # first N questions of each benchmark (as `eval benchmarks --limit`)
    batch_size: AtLeastOne = 8
    max_new_tokens: AtLeastOne | None = None  # None: each benchmark's own


class TrainConfig(Section):
    stage: Literal[1, 2] = 1
    output_dir: str = "runs/stage1"
    init_from: str | None = None  # a stage-1 checkpoint to start stage 2 from
    tune: TuneConfig = Field(default_factory=TuneConfig)
    epochs: AtLeastOne = 1
    max_steps: AtLeastOne | None = None  # optimizer steps; overrides epochs when set
    batch_size: AtLeastOne = 8  # per process, per micro-step
    grad_accum: AtLeastOne = 1
    lr: LearningRate = 1e-3
    vision_lr: LearningRate | None = None  # SEA-PRIME tunes the tower with 2e-6
    weight_decay: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.0
    warmup_ratio: Fraction = 0.03
    max_grad_norm: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | None = 1.0
    # A non-finite loss or gradient norm on any rank: stop before the update (naming step, records, terms), or
    # skip that batch's update, count it, and stop after `max_nonfinite_in_a_row` such steps in a row.
    on_nonfinite: Literal["stop", "skip_batch"] = "stop"
    max_nonfinite_in_a_row: AtLeastOne = 5
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: NonNegative = 0
    log_every: AtLeastOne = 10
    save_every: AtLeastOne | None = None  # optimizer steps between resumable checkpoints
    keep_checkpoints: NonNegative = 2  # 0: keep every checkpoint
    # Stage 1: drop this share of each image's visual tokens (and their placeholders) at random, as FLIP drops
    # patches: shorter sequences, cheaper steps. Evaluation and generation always see every token.
    visual_token_drop: Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)] = 0.0
    eval: TrainEvalConfig = Field(default_factory=TrainEvalConfig)


class RunConfig(Section):
    """Each section's types are checked here; what needs the objective and connector registries (their
    options, the rules between sections) is checked by vlalign.train.checks before any weights load."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    # objective name -> {weight: float, ...objective options}; see vlalign/objectives.
    objectives: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"generative": {"weight": 1.0}})


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line: what went wrong and where (its own message spans several)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(exc, 'problem', None) or ' '.join(str(exc).split())}{where}"


def parse_override(text: str) -> tuple[list[str], Any, str]:
    """key=value -> (key path, the value as YAML reads it, the raw text)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.lr=2e-5)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({yaml_problem(exc)})") from None
    return key.strip().split("."), value, raw


def _wants_text(annotation) -> bool:
    """A str field, a Literal of strings, or an optional one of those."""
    if annotation is str:
        return True
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return all(isinstance(arg, str) for arg in args)
    if origin in (Union, types.UnionType):
        kinds = [arg for arg in args if arg is not type(None)]
        return bool(kinds) and all(_wants_text(arg) for arg in kinds)
    return False


def _typed(annotation, value: Any, raw: str) -> Any:
    """`--set train.mixed_precision=no`: YAML reads `no` as False; a text field keeps the text as written."""
    if _wants_text(annotation) and not isinstance(value, str) and raw.strip() not in ("", "null", "~"):
        return raw.strip()
    return value


def _apply_override(tree: dict, section_model: type[BaseModel] | None, path: list[str], value: Any,
                    full_key: str, raw: str) -> None:
    head, rest = path[0], path[1:]
    if section_model is not None and head not in section_model.model_fields:
        valid = ", ".join(sorted(section_model.model_fields))
        raise ConfigError(f"unknown config key {full_key!r}: {head!r} is not one of: {valid}")
    if not rest:
        annotation = section_model.model_fields[head].annotation if section_model is not None else None
        tree[head] = _typed(annotation, value, raw)
        return
    child_model = None
    if section_model is not None:
        annotation = section_model.model_fields[head].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            child_model = annotation
    child = tree.setdefault(head, {})
    if not isinstance(child, dict):
        raise ConfigError(f"config key {full_key!r}: {head!r} holds a value, not a section")
    _apply_override(child, child_model, rest, value, full_key, raw)


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


def _section_type(section_model: type[BaseModel], key: str) -> type[BaseModel] | None:
    annotation = section_model.model_fields[key].annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def apply_patch(tree: dict, patch: dict, section_model: type[BaseModel] = None, prefix: str = "") -> None:
    """Merge a nested patch ({"train": {"lr": 3e-4}}) into a config tree: sections merge key by key, every
    other value (a dict-valued field such as `objectives` or `model.connector_options` included) is
    replaced whole, as `--set key=value` replaces it. Unknown keys are errors listing the valid ones."""
    section_model = section_model or RunConfig
    for key, value in patch.items():
        full_key = f"{prefix}{key}"
        child = _section_type(section_model, key) if key in section_model.model_fields else None
        if child is not None and isinstance(value, dict):
            subtree = tree.setdefault(key, {})
            apply_patch(subtree, value, child, f"{full_key}.")
        else:
            _apply_override(tree, section_model, [key], value, full_key, raw="")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                patches: list[dict] | tuple[dict, ...] = ()) -> RunConfig:
    """The YAML file (or the defaults), then each nested `patches` dict, then each `--set` override."""
    tree: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {yaml_problem(exc)}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        source = str(path)
    for patch in patches:
        apply_patch(tree, patch)
    for text in overrides:
        keys, value, raw = parse_override(text)
        _apply_override(tree, RunConfig, keys, value, ".".join(keys), raw)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def dump_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
