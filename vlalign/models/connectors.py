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
    """Base: optional reduction of the patch grid, then the connector's own map.

    - `pool` k: k x k average pooling (seed 000 sec. 4.4). Edge windows of a grid that k does not divide
      are averaged over the cells they cover (ceil mode), so no patch is dropped.
    - `merge` k: space-to-depth, each k x k window's cells concatenated into one token of k*k*Dv
      features (the patch merger of Qwen2-VL / InternVL's pixel shuffle): fewer tokens, nothing averaged
      away. Edge windows are zero-padded.
    Prefix (CLS) tokens, when kept, pass through unreduced (zero-padded to the merged width).
    - `norm`: LayerNorm on the (reduced) vision features before the map, as InternVL's and Idefics'
      projectors do. CNN stage features are un-normalised (BatchNorm scale, values in the tens): without
      it the projected tokens start and stay tens of times larger than the LLM's word embeddings.
    """

    pool: int = 1
    merge: int = 1
    needs_pixels: bool = False  # True: encode() also takes the images (X-Former's MAE branch)

    def encode(self, vision_tokens: torch.Tensor, grid: tuple[int, int],
               pixel_values: torch.Tensor | None = None):
        """(LLM-space tokens, what the connector's own objectives read: None for patch connectors)."""
        return self(vision_tokens, grid), None

    def frozen_modules(self) -> list[nn.Module]:
        """Parts that stay frozen even when the connector trains (X-Former's MAE)."""
        return []

    def _set_reduction(self, pool: int, merge: int) -> None:
        for name, value in (("pool", pool), ("merge", merge)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model.connector_options.{name} must be an integer >= 1, got {value!r}")
        if pool > 1 and merge > 1:
            raise ConfigError("model.connector_options: give pool or merge, not both")
        self.pool, self.merge = pool, merge

    @property
    def window(self) -> int:
        return max(self.pool, self.merge)

    def output_tokens(self, num_prefix: int, grid: tuple[int, int]) -> int:
        """Visual tokens this connector emits for `num_prefix` extra tokens followed by a `grid` of patches."""
        return num_prefix + math.ceil(grid[0] / self.window) * math.ceil(grid[1] / self.window)

    def _set_input_norm(self, enabled: bool, dim: int) -> None:
        if not isinstance(enabled, bool):
            raise ConfigError(f"model.connector_options.norm must be true or false, got {enabled!r}")
        # No module when off, so state-dict names stay those of transformers' LlavaMultiModalProjector.
        if enabled:
            self.input_norm = nn.LayerNorm(dim)

    def prepared(self, vision_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Reduction, then the optional input LayerNorm: what each connector's own map consumes."""
        tokens = self.reduced(vision_tokens, grid)
        norm = getattr(self, "input_norm", None)
        return norm(tokens) if norm is not None else tokens

    def reduced(self, vision_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """[B, N, Dv] -> [B, M, Dv] (pool) or [B, M, merge*merge*Dv] (merge)."""
        if self.window == 1:
            return vision_tokens
        rows, cols = grid
        k = self.window
        num_prefix = vision_tokens.shape[1] - rows * cols
        prefix, patches = vision_tokens[:, :num_prefix], vision_tokens[:, num_prefix:]
        maps = patches.transpose(1, 2).reshape(patches.shape[0], -1, rows, cols)
        if self.pool > 1:
            reduced = nn.functional.avg_pool2d(maps, k, k, ceil_mode=True, count_include_pad=False)
            return torch.cat([prefix, reduced.flatten(2).transpose(1, 2)], dim=1)
        maps = nn.functional.pad(maps, (0, -cols % k, 0, -rows % k))
        # unfold orders each window's features channel-major: [B, Dv*k*k, windows]
        merged = nn.functional.unfold(maps, kernel_size=k, stride=k).transpose(1, 2)
        prefix = nn.functional.pad(prefix, (0, merged.shape[-1] - prefix.shape[-1]))
        return torch.cat([prefix, merged], dim=1)

    def reduced_dim(self, vision_dim: int) -> int:
        return vision_dim * self.merge * self.merge


@register_connector("linear")
class LinearConnector(Connector):
    def __init__(self, vision_dim: int, llm_dim: int, pool: int = 1, merge: int = 1, norm: bool = False):
        super().__init__()
        self._set_reduction(pool, merge)
        self._set_input_norm(norm, self.reduced_dim(vision_dim))
        self.linear = nn.Linear(self.reduced_dim(vision_dim), llm_dim)

    def forward(self, vision_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.linear(self.prepared(vision_tokens, grid))


@register_connector("mlp2x_gelu")
class MLPConnector(Connector):
    """LLaVA-1.5's projector; parameter names match transformers' LlavaMultiModalProjector."""

    def __init__(self, vision_dim: int, llm_dim: int, pool: int = 1, merge: int = 1, norm: bool = False):
        super().__init__()
        self._set_reduction(pool, merge)  # fewer tokens from a finer feature map
        self._set_input_norm(norm, self.reduced_dim(vision_dim))
        self.linear_1 = nn.Linear(self.reduced_dim(vision_dim), llm_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, vision_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(self.prepared(vision_tokens, grid))))


@register_connector("avgpool")
class AvgPoolConnector(Connector):
    """k x k average pooling of the patch grid, then a linear map (seed 000, sec. 4.4: 8x8 on CLIP's 24x24)."""

    def __init__(self, vision_dim: int, llm_dim: int, pool: int = 2, norm: bool = False):
        super().__init__()
        self._set_reduction(pool, 1)
        self._set_input_norm(norm, vision_dim)
        self.linear = nn.Linear(vision_dim, llm_dim)

    def forward(self, vision_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.linear(self.prepared(vision_tokens, grid))


def build_connector(name: str, vision_dim: int, llm_dim: int, options: dict | None = None,
                    tower_stats: tuple | None = None) -> Connector:
    """`tower_stats`: the tower's pixel (mean, std), handed to connectors that read the images themselves."""
    import vlalign.models.query_connectors  # noqa: F401  registers qformer / xformer
    if name not in CONNECTORS:
        raise ConfigError(f"unknown connector {name!r}; registered: {', '.join(sorted(CONNECTORS))}")
    options = dict(options or {})
    if CONNECTORS[name].needs_pixels and tower_stats is not None:
        options.update(tower_mean=tower_stats[0], tower_std=tower_stats[1])
    try:
        return CONNECTORS[name](vision_dim, llm_dim, **options)
    except TypeError as exc:
        raise ConfigError(f"connector {name!r}: bad model.connector_options {options}: {exc}") from exc
