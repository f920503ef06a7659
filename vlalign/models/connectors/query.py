"""Query connectors: `qformer` (BLIP-2) and `xformer` (X-Former), both ending in one FC layer into the LLM.

Unlike the patch connectors they emit a fixed number of visual tokens (the queries), whatever the grid,
and hand their objectives the final queries (`aux["final_queries"]`); asked for `reconstruction`, the
X-Former also returns the MAE decoder's prediction, its target and the patch mask; asked for `query_pass`,
both return what BLIP-2's own ITM / ITG passes read (normalised image features, per-layer query states). The `qformer` /
`xformer` objectives (objectives/qformer.py) compute ITC, ITM, ITG and the reconstruction loss from them;
the LLM-alignment stage trains the connector with the generative loss through `language_projection`.
"""

from __future__ import annotations

import torch
from pydantic import field_validator, model_validator
from torch import nn

from vlalign.data.images import IMAGENET_MEAN, IMAGENET_STD
from vlalign.models.connectors.base import Connector, ConnectorOptions, ConnectorOutput, register_connector
from vlalign.models.mae_branch import MaeBranch
from vlalign.models.query_former import build_query_former


class QFormerOptions(ConnectorOptions):
    num_queries: int = 32
    text_encoder: str = "minilm-l6"  # a BERT-family source; BLIP-2 uses bert-base-uncased
    cross_attention_every: int = 2
    embed_dim: int = 256  # ITC projection width
    max_text_length: int = 32  # BLIP-2's
    dropout: float = 0.1
    freeze_former: bool = False  # LLM-alignment ablation: only the FC layer trains


class XFormerOptions(QFormerOptions):
    mae: str | None = None  # a ViTMAEForPreTraining source: hub id (facebook/vit-mae-huge) or folder
    mask_ratio: float = 0.5  # X-Former's

    @field_validator("mask_ratio")
    @classmethod
    def _ratio(cls, value):
        if not 0.0 < value < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {value!r}")
        return value

    @model_validator(mode="after")
    def _needs_mae(self):
        if not self.mae:
            raise ValueError("xformer needs model.connector_options.mae: a ViTMAEForPreTraining hub id or folder "
                             "(e.g. facebook/vit-mae-huge, or `vlalign pretrain-mae` output)")
        return self


@register_connector("qformer")
class QFormerConnector(Connector):
    Options = QFormerOptions
    kind = "query"
    window = None  # no patch grid: a query is not tied to an image position (patch diagnostics skip it)

    def __init__(self, vision_dim: int, llm_dim: int, options: QFormerOptions | None = None, tower_stats=None):
        options = options or self.Options()
        super().__init__(options)
        self.former, self.text_tokenizer = build_query_former(options.text_encoder, options.num_queries, vision_dim,
                                                              options.cross_attention_every, options.dropout)
        hidden = self.former.hidden_size
        self.vision_norm = nn.LayerNorm(vision_dim)  # BLIP-2's ln_vision on the frozen tower's features
        self.vision_proj = nn.Linear(hidden, options.embed_dim)  # ITC heads (BLIP-2 names)
        self.text_proj = nn.Linear(hidden, options.embed_dim)
        self.itm_head = nn.Linear(hidden, 2)
        self.language_projection = nn.Linear(hidden, llm_dim)  # the stage-2 FC layer into the LLM
        self.max_text_length = options.max_text_length
        self.dropout = options.dropout
        self.freeze_former = options.freeze_former

    def output_tokens(self, num_prefix: int, grid: tuple[int, int]) -> int:
        return self.former.num_queries

    def frozen_modules(self) -> list[nn.Module]:
        """Modules that stay frozen even when the connector trains (apply_tune re-freezes them)."""
        if self.freeze_former:
            return [module for name, module in self.named_children() if name != "language_projection"]
        return []

    def _query_pass(self, vision_tokens: torch.Tensor,
                    aux: frozenset[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The Q-Former's queries over the image; asked for `query_pass`, also what BLIP-2's own ITM / ITG passes
        read: the normalised image features and each layer's input query states (ITG's cached keys/values)."""
        features = self.vision_norm(vision_tokens)
        if "query_pass" not in aux:
            return self.former.encode_queries(features), {}
        queries, layer_inputs = self.former.encode_queries(features, keep_layer_inputs=True)
        return queries, {"vision_features": features, "query_layer_inputs": layer_inputs}

    def _queries(self, vision_tokens: torch.Tensor, pixel_values: torch.Tensor | None,
                 aux: frozenset[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self._query_pass(vision_tokens, aux)

    def encode(self, vision_tokens: torch.Tensor, grid: tuple[int, int], pixel_values: torch.Tensor | None = None,
               aux: frozenset[str] = frozenset()) -> ConnectorOutput:
        final_queries, extra = self._queries(vision_tokens, pixel_values, aux)
        return ConnectorOutput(self.language_projection(final_queries), {"final_queries": final_queries, **extra})

    def forward(self, vision_tokens: torch.Tensor, grid: tuple[int, int],
                pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode(vision_tokens, grid, pixel_values).tokens

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
    """Q-Former + the MAE branch (X-Former sec. 2.3)."""

    reads_pixels = True  # the MAE branch encodes the image itself

    Options = XFormerOptions

    def __init__(self, vision_dim: int, llm_dim: int, options: XFormerOptions, tower_stats=None):
        super().__init__(vision_dim, llm_dim, options)
        tower_mean, tower_std = tower_stats or (IMAGENET_MEAN, IMAGENET_STD)
        heads = self.former.layer[0].attention.heads
        self.mae_branch = MaeBranch(options.mae, self.former.hidden_size, heads, options.mask_ratio, tower_mean,
                                    tower_std, self.dropout)

    @property
    def norm_pix_loss(self) -> bool:
        """Whether the reconstruction target is each patch standardised (MAE's norm_pix_loss)."""
        return bool(self.mae_branch.mae.config.norm_pix_loss)

    def frozen_modules(self) -> list[nn.Module]:
        return [*super().frozen_modules(), *self.mae_branch.frozen_modules()]

    def source_modules(self) -> list[nn.Module]:
        return self.mae_branch.frozen_modules()

    def _queries(self, vision_tokens: torch.Tensor, pixel_values: torch.Tensor | None,
                 aux: frozenset[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if pixel_values is None:
            raise ValueError("connector xformer needs the images' pixel values for its MAE branch")
        queries, query_pass = self._query_pass(vision_tokens, aux)
        final_queries, extra = self.mae_branch(queries, pixel_values, reconstruct="reconstruction" in aux)
        return final_queries, {**query_pass, **extra}
