"""Query connectors: `qformer` (BLIP-2) and `xformer` (seed 002), both ending in one FC layer into the LLM.

Unlike the patch connectors they emit a fixed number of visual tokens (the queries), whatever the grid,
and they return, besides the LLM-space tokens, what their stage-1 objective reads (`QueryOutput`).
The `qformer` objective (objectives/qformer.py) trains them with ITC, ITM, ITG (+ reconstruction for
`xformer`); the LLM-alignment stage trains them with the generative loss through `language_projection`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlalign.data.images import IMAGENET_MEAN, IMAGENET_STD
from vlalign.errors import ConfigError
from vlalign.models.connectors import Connector, register_connector
from vlalign.models.query_former import build_query_former


@dataclass
class QueryOutput:
    final_queries: torch.Tensor  # [B, Q, H] what ITC/ITM/ITG read and the FC layer maps into the LLM
    reconstruction_loss: torch.Tensor | None = None  # X-Former, when reconstruction was asked for
    masked_fraction: float = 0.0


@register_connector("qformer")
class QFormerConnector(Connector):
    """Options: num_queries (32), text_encoder (BERT-family source; offline default the packaged MiniLM,
    BLIP-2 uses bert-base-uncased), cross_attention_every (2), embed_dim (ITC projection width, 256),
    max_text_length (32, BLIP-2's), dropout (0.1), freeze_former (stage-2 ablation: only the FC trains)."""

    window = None  # no patch grid: a query is not tied to an image position (patch diagnostics skip it)

    def __init__(self, vision_dim: int, llm_dim: int, num_queries: int = 32, text_encoder: str = "minilm-l6",
                 cross_attention_every: int = 2, embed_dim: int = 256, max_text_length: int = 32,
                 dropout: float = 0.1, freeze_former: bool = False):
        super().__init__()
        if not isinstance(freeze_former, bool):
            raise ConfigError(f"model.connector_options.freeze_former must be true or false, got {freeze_former!r}")
        self.former, self.text_tokenizer = build_query_former(text_encoder, num_queries, vision_dim,
                                                              cross_attention_every, dropout)
        hidden = self.former.hidden_size
        self.vision_norm = nn.LayerNorm(vision_dim)  # BLIP-2's ln_vision on the frozen tower's features
        self.vision_proj = nn.Linear(hidden, embed_dim)  # ITC heads (BLIP-2 names)
        self.text_proj = nn.Linear(hidden, embed_dim)
        self.itm_head = nn.Linear(hidden, 2)
        self.language_projection = nn.Linear(hidden, llm_dim)  # the stage-2 FC layer into the LLM
        self.max_text_length = max_text_length
        self.dropout = dropout
        self.freeze_former = freeze_former
        self.reconstruct = False  # set by the xformer objective for stage 1

    def output_tokens(self, num_prefix: int, grid: tuple[int, int]) -> int:
        return self.former.num_queries

    def frozen_modules(self) -> list[nn.Module]:
        """Modules that stay frozen even when the connector trains (apply_tune re-freezes them)."""
        if self.freeze_former:
            return [module for name, module in self.named_children() if name != "language_projection"]
        return []

    def _queries(self, vision_tokens: torch.Tensor, pixel_values: torch.Tensor | None) -> QueryOutput:
        return QueryOutput(self.former.encode_queries(self.vision_norm(vision_tokens)))

    def encode(self, vision_tokens: torch.Tensor, grid: tuple[int, int],
               pixel_values: torch.Tensor | None = None) -> tuple[torch.Tensor, QueryOutput]:
        out = self._queries(vision_tokens, pixel_values)
        return self.language_projection(out.final_queries), out

    def forward(self, vision_tokens: torch.Tensor, grid: tuple[int, int],
                pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode(vision_tokens, grid, pixel_values)[0]

    def itc_embeddings(self, final_queries: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
        """ITC's two sides: projected queries [B, Q, E] and the projected text [CLS] [B, E] (text-only pass)."""
        return self.vision_proj(final_queries), self.text_proj(self.former.encode_text(ids, mask)[:, 0])

    def tokenize(self, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Captions -> (ids, mask) of at most max_text_length tokens, and how many were cut."""
        encoded = self.text_tokenizer(texts, padding="longest", truncation=True, max_length=self.max_text_length,
                                      return_tensors="pt")
        cut = sum(len(ids) > self.max_text_length for ids in self.text_tokenizer(texts)["input_ids"])
        return encoded["input_ids"].to(device), encoded["attention_mask"].to(device), cut


@register_connector("xformer")
class XFormerConnector(QFormerConnector):
    """Q-Former + the MAE branch. Extra options: mae (a ViTMAEForPreTraining source: hub id such as
    facebook/vit-mae-huge, or the folder `vlalign pretrain-mae` writes), mask_ratio (0.5, the paper's)."""

    needs_pixels = True

    def __init__(self, vision_dim: int, llm_dim: int, mae: str | None = None, mask_ratio: float = 0.5,
                 tower_mean=IMAGENET_MEAN, tower_std=IMAGENET_STD, **options):
        super().__init__(vision_dim, llm_dim, **options)
        if not mae:
            raise ConfigError("connector xformer needs model.connector_options.mae: a ViTMAEForPreTraining "
                              "hub id or folder (e.g. facebook/vit-mae-huge, or `vlalign pretrain-mae` output)")
        from vlalign.models.mae_branch import MaeBranch

        heads = self.former.layer[0].attention.heads
        self.mae_branch = MaeBranch(mae, self.former.hidden_size, heads, mask_ratio, tower_mean, tower_std,
                                    self.dropout)

    def frozen_modules(self) -> list[nn.Module]:
        return [*super().frozen_modules(), *self.mae_branch.frozen_modules()]

    def _queries(self, vision_tokens: torch.Tensor, pixel_values: torch.Tensor | None) -> QueryOutput:
        if pixel_values is None:
            raise ValueError("connector xformer needs the images' pixel values for its MAE branch")
        queries = self.former.encode_queries(self.vision_norm(vision_tokens))
        result = self.mae_branch(queries, pixel_values, reconstruct=self.reconstruct and self.training)
        return QueryOutput(result.final_queries, result.reconstruction_loss, result.masked_fraction)
