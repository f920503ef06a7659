"""Patch connectors: one visual token per (reduced) cell of the tower's patch grid: linear, mlp2x_gelu, avgpool.

Options shared by all three:
- `pool` k: k x k average pooling (Ak et al. sec. 4.4). Edge windows of a grid that k does not divide
  are averaged over the cells they cover (ceil mode), so no patch is dropped.
- `merge` k: space-to-depth, each k x k window's cells concatenated into one token of k*k*Dv
  features (the patch merger of Qwen2-VL / InternVL's pixel shuffle): fewer tokens, nothing averaged
  away. Edge windows are zero-padded.
  Prefix (CLS) tokens, when kept, pass through unreduced (zero-padded to the merged width).
- `norm`: LayerNorm on the (reduced) vision features before the map, as InternVL's and Idefics'
  projectors do. CNN stage features are un-normalised (BatchNorm scale, values in the tens): without
  it the projected tokens start and stay tens of times larger than the LLM's word embeddings.
"""

from __future__ import annotations

import math

import torch
from pydantic import field_validator, model_validator
from torch import nn

from vlalign.models.connectors.base import Connector, ConnectorOptions, register_connector


def _window_size(value, name: str):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


class PatchOptions(ConnectorOptions):
    pool: int = 1
    merge: int = 1
    norm: bool = False

    @field_validator("pool", "merge", mode="before")
    @classmethod
    def _positive(cls, value, info):
        return _window_size(value, info.field_name)

    @model_validator(mode="after")
    def _one_reduction(self):
        if self.pool > 1 and self.merge > 1:
            raise ValueError("give pool or merge, not both")
        return self


class AvgPoolOptions(ConnectorOptions):
    pool: int = 2
    norm: bool = False

    @field_validator("pool", mode="before")
    @classmethod
    def _positive(cls, value, info):
        return _window_size(value, info.field_name)


class PatchConnector(Connector):
    """Optional reduction of the patch grid and input LayerNorm, then the subclass's own map."""

    Options = PatchOptions
    kind = "patch"

    def __init__(self, vision_dim: int, options: ConnectorOptions):
        super().__init__(options)
        self.pool, self.merge = options.pool, getattr(options, "merge", 1)
        # No module when off, so state-dict names stay those of transformers' LlavaMultiModalProjector.
        if options.norm:
            self.input_norm = nn.LayerNorm(self.reduced_dim(vision_dim))

    @property
    def window(self) -> int:
        return max(self.pool, self.merge)

    def output_tokens(self, num_prefix: int, grid: tuple[int, int]) -> int:
        """Visual tokens this connector emits for `num_prefix` extra tokens followed by a `grid` of patches."""
        return num_prefix + math.ceil(grid[0] / self.window) * math.ceil(grid[1] / self.window)

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
class LinearConnector(PatchConnector):
    def __init__(self, vision_dim: int, llm_dim: int, options: PatchOptions | None = None, tower_stats=None):
        super().__init__(vision_dim, options or PatchOptions())
        self.linear = nn.Linear(self.reduced_dim(vision_dim), llm_dim)

    def forward(self, vision_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.linear(self.prepared(vision_tokens, grid))


@register_connector("mlp2x_gelu")
class MLPConnector(PatchConnector):
    """LLaVA-1.5's projector; parameter names match transformers' LlavaMultiModalProjector."""

    def __init__(self, vision_dim: int, llm_dim: int, options: PatchOptions | None = None, tower_stats=None):
        super().__init__(vision_dim, options or PatchOptions())  # pool/merge: fewer tokens from a finer map
        self.linear_1 = nn.Linear(self.reduced_dim(vision_dim), llm_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, vision_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(self.prepared(vision_tokens, grid))))


@register_connector("avgpool")
class AvgPoolConnector(PatchConnector):
    """k x k average pooling of the patch grid, then a linear map (Ak et al., sec. 4.4: 8x8 on CLIP's 24x24)."""

    Options = AvgPoolOptions

    def __init__(self, vision_dim: int, llm_dim: int, options: AvgPoolOptions | None = None, tower_stats=None):
        super().__init__(vision_dim, options or AvgPoolOptions())
        self.linear = nn.Linear(vision_dim, llm_dim)

    def forward(self, vision_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.linear(self.prepared(vision_tokens, grid))
