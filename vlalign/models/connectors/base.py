"""The connector contract (LLaVA's `multi_modal_projector`): vision tokens [B, N, Dv] -> LLM-space tokens.

A connector plugs in with a registered class that has
- typed `Options` (pydantic, unknown keys are errors), validated from `model.connector_options` before any
  weights load (vlalign.train.checks),
- `output_tokens(num_prefix, grid)`: how many visual tokens it emits, so that exactly one function
  (`VisionLanguageModel.num_visual_tokens`) decides how many `<image>` placeholders a prompt gets,
- `encode(...) -> ConnectorOutput`: the LLM-space tokens plus named auxiliary tensors that its objectives
  read (never a loss: losses are computed by objectives),
- its own declarations of what stays frozen (`frozen_modules`) and what reloads from a source of its own
  instead of being saved in a checkpoint (`source_modules`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from vlalign.errors import ConfigError
from vlalign.registry import class_registrar

CONNECTORS: dict[str, type["Connector"]] = {}


@dataclass
class ConnectorOutput:
    """What `Connector.encode` returns: visual tokens for the LLM and what its objectives read."""

    tokens: torch.Tensor  # [num_images, Nv, D] in the LLM's input space
    aux: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. final_queries, reconstruction_*


class ConnectorOptions(BaseModel):
    # strict: YAML's `true` is not a pool size, `2.5` is not an integer
    model_config = ConfigDict(extra="forbid", strict=True)


register_connector = class_registrar(CONNECTORS, "connector")


def connector_class(name: str) -> type["Connector"]:
    if name not in CONNECTORS:
        raise ConfigError(f"unknown connector {name!r}; registered: {', '.join(sorted(CONNECTORS))}")
    return CONNECTORS[name]


def connector_options(name: str, options: dict | None) -> ConnectorOptions:
    """`model.connector_options` validated against the connector's Options: one line per problem."""
    cls = connector_class(name)
    try:
        return cls.Options.model_validate(dict(options or {}))
    except ValidationError as exc:
        problems = "; ".join(f"model.connector_options.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                             for e in exc.errors())
        raise ConfigError(f"connector {name!r}: {problems} (valid keys: "
                          f"{', '.join(sorted(cls.Options.model_fields))})") from None


def build_connector(name: str, vision_dim: int, llm_dim: int, options: dict | None = None,
                    tower_stats: tuple | None = None) -> "Connector":
    """`tower_stats`: the tower's pixel (mean, std), for connectors that read the images themselves."""
    cls = connector_class(name)
    return cls(vision_dim, llm_dim, connector_options(name, options), tower_stats=tower_stats)


class Connector(nn.Module):
    """Base of every connector. Subclasses set `Options` and `kind` and implement forward."""

    name: ClassVar[str]
    Options: ClassVar[type[ConnectorOptions]] = ConnectorOptions
    # "patch": one visual token per (reduced) patch-grid cell, after the tower's prefix tokens; "query": a
    # fixed number of learned queries, not tied to image positions (patch diagnostics and SEA skip these).
    kind: ClassVar[str] = "patch"
    window: int | None = 1  # patch cells per visual token along each side (None: no patch grid)
    reads_pixels: ClassVar[bool] = False  # True: `encode` needs the pixel values as well as the tower's output

    def __init__(self, options: ConnectorOptions):
        super().__init__()
        self.options = options

    def encode(self, vision_tokens: torch.Tensor, grid: tuple[int, int], pixel_values: torch.Tensor | None = None,
               aux: frozenset[str] = frozenset()) -> ConnectorOutput:
        """LLM-space tokens, plus the auxiliary tensors named in `aux` (none for patch connectors)."""
        return ConnectorOutput(self(vision_tokens, grid))

    def output_tokens(self, num_prefix: int, grid: tuple[int, int]) -> int:
        raise NotImplementedError

    def frozen_modules(self) -> list[nn.Module]:
        """Parts that stay frozen even when the connector trains (X-Former's MAE, a frozen former)."""
        return []

    def source_modules(self) -> list[nn.Module]:
        """Frozen parts that load from a source of their own (X-Former's MAE): never saved in a checkpoint,
        so a ViT-H MAE does not add 2.5 GB to every one."""
        return []
