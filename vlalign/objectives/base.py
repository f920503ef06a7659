"""The objective plug-in contract: (model output, batch, model) -> named loss terms, weighted by config.

A new objective is one registered class; it never touches the loop, the dataset or the batch. It declares:
- `Options`: typed options (pydantic; unknown keys are errors),
- `requires`: cross-section rules (data format, a frozen LLM, connector names or kind), checked with its
  options before any weights load (vlalign.train.checks),
- `sample_fields(options)`: the per-sample fields it reads from `Batch.extras` (vlalign.data.samples),
- `forward_request`: what the forward pass must compute (an LLM pass or not, auxiliary connector outputs),
- `term_weights(options)`: the names and weights of the unweighted terms `forward` returns; names must be
  unique across the configured objectives.
It may own parameters (a learnable temperature) that the loop optimises and checkpoints with the rest;
the model's own parts it reads through the `model` argument of `forward`, never by holding them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from vlalign.errors import ConfigError
from vlalign.models.vlm import ForwardRequest
from vlalign.registry import class_registrar

OBJECTIVES: dict[str, type["Objective"]] = {}


class ObjectiveOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = 1.0


@dataclass(frozen=True)
class Requires:
    """Rules across config sections that an objective needs; empty fields mean: no constraint."""

    data_format: str | None = None  # "plain" (image-caption pairs) or "chat"
    frozen_llm: bool = False  # the stage's recipe must leave the LLM frozen
    connectors: tuple[str, ...] = ()  # allowed model.connector names
    connector_kind: str | None = None  # "patch" or "query" (Connector.kind)
    why: str = ""  # the reason, quoted in the error


@dataclass
class Terms:
    losses: dict[str, torch.Tensor]  # unweighted scalar losses, by term name
    metrics: dict[str, float] = field(default_factory=dict)  # logged only (temperature, pair counts, ...)


class Objective(nn.Module):
    name: ClassVar[str]
    Options: ClassVar[type[ObjectiveOptions]] = ObjectiveOptions
    requires: ClassVar[Requires] = Requires()
    forward_request: ClassVar[ForwardRequest] = ForwardRequest()

    def __init__(self, options: ObjectiveOptions, model):
        super().__init__()
        self.options = options

    @classmethod
    def term_weights(cls, options: ObjectiveOptions) -> dict[str, float]:
        """Weight of each term this objective returns; one term named like the objective by default."""
        return {cls.name: options.weight}

    @classmethod
    def sample_fields(cls, options: ObjectiveOptions) -> dict[str, dict]:
        """The per-sample fields this objective reads from Batch.extras, with their options."""
        return {}

    def prepare(self, model, dataset, accelerator) -> None:
        """Called once before training with the built dataset (pre-extract caches, validate the setup)."""

    def forward(self, output, batch, model) -> Terms:
        raise NotImplementedError


register_objective = class_registrar(OBJECTIVES, "objective")


def objective_options(name: str, raw: dict | None) -> ObjectiveOptions:
    """`objectives.<name>` validated against the objective's Options."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; registered: {', '.join(sorted(OBJECTIVES))}")
    cls = OBJECTIVES[name]
    try:
        return cls.Options.model_validate(raw or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"objectives.{name}: {problems} (valid keys: "
                          f"{', '.join(sorted(cls.Options.model_fields))})") from None


def resolved_objectives(specs: dict[str, dict]) -> dict[str, tuple[type[Objective], ObjectiveOptions]]:
    """Each configured objective's class and validated options; term names checked to be unique."""
    if not specs:
        raise ConfigError("no objectives configured; e.g. objectives: {generative: {weight: 1.0}}")
    resolved = {name: (OBJECTIVES.get(name), objective_options(name, raw)) for name, raw in specs.items()}
    owners: dict[str, str] = {}
    for name, (cls, options) in resolved.items():
        for term in cls.term_weights(options):
            if term in owners:
                raise ConfigError(f"objectives {owners[term]!r} and {name!r} both return a loss term named "
                                  f"{term!r}; configure only one of them")
            owners[term] = name
    return resolved


def merged_sample_fields(specs: dict[str, dict]) -> dict[str, dict]:
    """The per-sample fields all configured objectives need; one field asked with different options is an error."""
    merged: dict[str, dict] = {}
    owner: dict[str, str] = {}
    for name, (cls, options) in resolved_objectives(specs).items():
        for field_name, field_options in cls.sample_fields(options).items():
            if field_name in merged and merged[field_name] != field_options:
                raise ConfigError(f"objectives {owner[field_name]!r} and {name!r} need the sample field "
                                  f"{field_name!r} laid out differently: {merged[field_name]} vs {field_options}")
            merged[field_name], owner[field_name] = field_options, name
    return merged


def merged_forward_request(objectives: nn.ModuleDict) -> ForwardRequest:
    return ForwardRequest.merge(objective.forward_request for objective in objectives.values())


def build_objectives(specs: dict[str, dict], model) -> nn.ModuleDict:
    built = nn.ModuleDict()
    for name, (cls, options) in resolved_objectives(specs).items():
        built[name] = cls(options, model)
    return built
