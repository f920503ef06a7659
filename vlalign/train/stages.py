"""Which parts train in which stage, and a log of exactly what trains.

Stage 1 (alignment): connector only; vision tower and LLM frozen.
Stage 2 (instruction tuning): connector + LLM (full or LoRA); the tower optionally, with its own LR.
Frozen components are kept in eval mode: a frozen CNN's BatchNorm statistics must not drift.
"""

from __future__ import annotations

import torch
from torch import nn

from vlalign.config import TuneConfig
from vlalign.errors import ConfigError
from vlalign.train.fast_paths import use_rand_dropout

STAGE_DEFAULTS = {
    1: {"vision": "frozen", "connector": "full", "llm": "frozen"},
    2: {"vision": "frozen", "connector": "full", "llm": "full"},
}


COMPONENT_KEYS = {"vision_tower": "vision", "multi_modal_projector": "connector", "language_model": "llm"}


def resolve_tune(stage: int, tune: TuneConfig) -> dict[str, str]:
    defaults = STAGE_DEFAULTS[stage]
    return {part: getattr(tune, part) or default for part, default in defaults.items()}


def inject_lora(language_model: nn.Module, tune: TuneConfig) -> None:
    """LoRA in place (no wrapper), so weight names stay `language_model.model.layers...`."""
    # peft imported on use: it takes ~2.5 s, and the config checks (resolve_tune) import this module
    from peft import LoraConfig, inject_adapter_in_model

    lora = tune.lora
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, bias="none")
    if config.target_modules == "all-linear":
        # peft resolves "all-linear" only through its wrappers; name the linear layers ourselves, minus the head.
        output = language_model.get_output_embeddings()
        names = {name.rsplit(".", 1)[-1] for name, module in language_model.named_modules()
                 if isinstance(module, nn.Linear) and module is not output}
        config.target_modules = sorted(names)
    inject_adapter_in_model(config, language_model)
    use_rand_dropout(language_model)


def apply_tune(model, stage: int, tune: TuneConfig) -> dict[str, str]:
    """Set requires_grad per component; returns the resolved recipe."""
    recipe = resolve_tune(stage, tune)
    for part, module in model.components().items():
        mode = recipe[COMPONENT_KEYS[part]]
        if mode == "lora":
            inject_lora(module, tune)
            for name, param in module.named_parameters():
                param.requires_grad = "lora_" in name
        else:
            module.requires_grad_(mode == "full")
        if hasattr(module, "frozen_modules"):  # e.g. X-Former's MAE stays frozen inside a training connector
            for frozen in module.frozen_modules():
                frozen.requires_grad_(False)
    return recipe


def keep_frozen_in_eval(model) -> None:
    """Call after model.train(): components without trainable parameters go back to eval mode."""
    for module in model.components().values():
        parts = [module, *(module.frozen_modules() if hasattr(module, "frozen_modules") else [])]
        for part in parts:
            if not any(p.requires_grad for p in part.parameters()):
                part.eval()


def parameter_table(model, extra: dict[str, nn.Module] | None = None) -> list[tuple[str, int, int]]:
    """(component, trainable, frozen) parameter counts."""
    rows = []
    parts = dict(model.components())
    parts.update(extra or {})
    for name, module in parts.items():
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
        rows.append((name, trainable, frozen))
    return rows


def format_parameter_table(rows: list[tuple[str, int, int]]) -> str:
    lines = [f"{'component':<24}{'trainable':>16}{'frozen':>16}"]
    for name, trainable, frozen in rows:
        lines.append(f"{name:<24}{trainable:>16,}{frozen:>16,}")
    total_t = sum(r[1] for r in rows)
    total_f = sum(r[2] for r in rows)
    lines.append(f"{'total':<24}{total_t:>16,}{total_f:>16,}")
    return "\n".join(lines)


def merge_lora(language_model: nn.Module) -> int:
    """Fold every LoRA adapter into its base layer and put the plain layer back in its place, so the weight names are
    the LLM's own (`...q_proj.weight`) and nothing of peft is left. Returns the number of merged layers."""
    if not any("lora_" in name for name, _ in language_model.named_parameters()):
        return 0  # a stage-1 or full-tuning checkpoint: no adapter, and peft (seconds to import) is not needed
    from peft.tuners.tuners_utils import BaseTunerLayer  # on use, as in inject_lora

    layers = [(name, module) for name, module in language_model.named_modules() if isinstance(module, BaseTunerLayer)]
    with torch.no_grad():
        for name, module in layers:
            module.merge(safe_merge=True)  # safe_merge: a NaN in the merged weight is an error, not a silent export
            parent, _, child = name.rpartition(".")
            setattr(language_model.get_submodule(parent), child, module.get_base_layer())
    left = [name for name, _ in language_model.named_parameters() if "lora_" in name]
    if left:
        raise ConfigError(f"LoRA weights left after merging (not a peft LoRA layer?): {left[:3]}")
    return len(layers)
