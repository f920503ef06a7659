"""The objective interface: (model output, batch) -> named loss terms, weighted by config.

New objectives (contrastive, SEA, Q-Former) register a class and never touch the training loop:
they read what `ModelOutput` and `Batch` carry, return unweighted terms, and may own parameters
(e.g. a learnable temperature) that the loop optimises with the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from vlalign.errors import ConfigError

OBJECTIVES: dict[str, type["Objective"]] = {}


class ObjectiveOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = 1.0


@dataclass
class Terms:
    losses: dict[str, torch.Tensor]  # unweighted scalar losses, by term name
    metrics: dict[str, float] = field(default_factory=dict)  # logged only (temperature, pair counts, ...)


class Objective(nn.Module):
    name: ClassVar[str]
    Options: ClassVar[type[ObjectiveOptions]] = ObjectiveOptions
    needs_llm: ClassVar[bool] = True  # False: reads only the connector's output (Q-Former pre-training)

    def __init__(self, options: ObjectiveOptions, model):
        super().__init__()
        self.options = options

    def term_weights(self) -> dict[str, float]:
        """Weight of each term this objective returns; one term named like the objective by default."""
        return {self.name: self.options.weight}

    def data_requirements(self) -> dict:
        """What this objective needs the samples to carry, e.g. {"image_eos": {"prompt": True}}."""
        return {}

    def prepare(self, model, dataset, accelerator) -> None:
        """Called once before training with the built dataset (pre-extract caches, validate the setup)."""

    def forward(self, output, batch) -> Terms:
        raise NotImplementedError


def register_objective(name: str):
    def wrap(cls):
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} registered twice")
        cls.name = name
        OBJECTIVES[name] = cls
        return cls
    return wrap


def data_requirements(objectives: nn.ModuleDict) -> dict:
    merged: dict = {}
    for name, objective in objectives.items():
        for key, value in objective.data_requirements().items():
            if key in merged and merged[key] != value:
                raise ConfigError(f"objectives disagree on the sample layout {key!r}: {merged[key]} vs "
                                  f"{value} ({name})")
            merged[key] = value
    return merged


def build_objectives(specs: dict[str, dict], model) -> nn.ModuleDict:
    if not specs:
        raise ConfigError("no objectives configured; e.g. objectives: {generative: {weight: 1.0}}")
    built = nn.ModuleDict()
    for name, raw in specs.items():
        if name not in OBJECTIVES:
            raise ConfigError(f"unknown objective {name!r}; registered: {', '.join(sorted(OBJECTIVES))}")
        cls = OBJECTIVES[name]
        try:
            options = cls.Options.model_validate(raw or {})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"objectives.{name}: {problems} (valid keys: "
                              f"{', '.join(sorted(cls.Options.model_fields))})") from None
        built[name] = cls(options, model)
    return built
