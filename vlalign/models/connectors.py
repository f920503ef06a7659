"""Connectors (LLaVA's `multi_modal_projector`): vision tokens [B, N, Dv] -> LLM-space tokens [B, M, D].

Each connector also says how its output grid follows from the tower's grid, so that exactly one
function (`VisionLanguageModel.num_visual_tokens`) decides how many `<image>` placeholders a prompt gets.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from vlalign.errors import ConfigError

CONNECTORS: dict[str, Callable[..., "Connector"]] = {}


def register_connector(name: str):
    def wrap(cls):
        if name in CONNECTORS:
            raise ValueError(f"connector {name!r} registered twice")
        CONNECTORS[name] = cls
        return cls
    return wrap


class Connector(nn.Module):
    def output_tokens(self, num_prefix: int, grid: tuple[int, int]) -> int:
        """Visual tokens this connector emits for `num_prefix` extra tokens followed by a `grid` of patches."""
        return num_prefix + grid[0] * grid[1]


@register_connector("linear")
class LinearConnector(Connector):
    def __init__(self, vision_dim: int, llm_dim: int):
        super().__init__()
        self.linear = nn.Linear(vision_dim, llm_dim)

    def forward(self, vision_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.linear(vision_tokens)


@register_connector("mlp2x_gelu")
class MLPConnector(Connector):
    """LLaVA-1.5's projector; parameter names match transformers' LlavaMultiModalProjector."""

    def __init__(self, vision_dim: int, llm_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(vision_dim, llm_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, vision_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(vision_tokens)))


@register_connector("avgpool")
class AvgPoolConnector(Connector):
    """k x k average pooling of the patch grid, then a linear map (seed 000, sec. 4.4: 8x8 on CLIP's 24x24).

    Edge windows of a grid that k does not divide are averaged over the cells they cover (ceil mode),
    so no patch is dropped. Prefix (CLS) tokens, when kept, pass through the linear map unpooled.
    """

    def __init__(self, vision_dim: int, llm_dim: int, pool: int = 2):
        super().__init__()
        if pool < 1:
            raise ConfigError(f"model.connector_options.pool must be >= 1, got {pool}")
        self.pool = pool
        self.linear = nn.Linear(vision_dim, llm_dim)

    def output_tokens(self, num_prefix: int, grid: tuple[int, int]) -> int:
        return num_prefix + math.ceil(grid[0] / self.pool) * math.ceil(grid[1] / self.pool)

    def forward(self, vision_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        rows, cols = grid
        num_prefix = vision_tokens.shape[1] - rows * cols
        prefix, patches = vision_tokens[:, :num_prefix], vision_tokens[:, num_prefix:]
        maps = patches.transpose(1, 2).reshape(patches.shape[0], -1, rows, cols)
        pooled = nn.functional.avg_pool2d(maps, self.pool, self.pool, ceil_mode=True, count_include_pad=False)
        pooled = pooled.flatten(2).transpose(1, 2)
        return self.linear(torch.cat([prefix, pooled], dim=1))


def build_connector(name: str, vision_dim: int, llm_dim: int, options: dict | None = None) -> Connector:
    if name not in CONNECTORS:
        raise ConfigError(f"unknown connector {name!r}; registered: {', '.join(sorted(CONNECTORS))}")
    try:
        return CONNECTORS[name](vision_dim, llm_dim, **(options or {}))
    except TypeError as exc:
        raise ConfigError(f"connector {name!r}: bad model.connector_options {options}: {exc}") from exc
