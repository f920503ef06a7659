"""The Q-Former (BLIP-2; X-Former sec. 2.1): learnable queries and a text branch sharing BERT layers.

Every layer: self-attention over [query slots ; text tokens] under one of BLIP-2's three masks, then
(every `cross_attention_every`-th layer) cross-attention from the query slots to the frozen vision
features, then a feed-forward block of its own for query slots and for text. Text weights (embeddings,
self-attention, text FFN) start from a pretrained BERT-family encoder, the query FFN from a copy of the
text FFN (as BLIP-2 does), cross-attention and queries from scratch. Module names follow BERT's and
transformers' Blip2QFormer (`attention.self.query`, `crossattention`, `intermediate_query`, ...), so BERT
weights load by name.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from vlalign.errors import ConfigError
from vlalign.models.sources import load_or_explain, parse_source

MASK_MODES = ("unimodal", "bidirectional", "multimodal_causal")


def qformer_attention_mask(num_queries: int, text_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Boolean [B, Q+T, Q+T] mask, True where row position may attend to column position.

    unimodal (ITC): queries see queries, text sees text; bidirectional (ITM): all see all;
    multimodal_causal (ITG): queries see queries, text sees every query and earlier-or-same text.
    Padding columns are never attended; every row may attend to itself, so no row is empty.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"unknown Q-Former mask mode {mode!r}; one of {MASK_MODES}")
    batch, text_len = text_mask.shape
    total = num_queries + text_len
    device = text_mask.device
    is_query = torch.arange(total, device=device) < num_queries
    rows, cols = is_query[:, None], is_query[None, :]
    if mode == "unimodal":
        allowed = rows == cols
    elif mode == "bidirectional":
        allowed = torch.ones(total, total, dtype=torch.bool, device=device)
    else:
        position = torch.arange(total, device=device)
        allowed = (rows & cols) | (~rows & (cols | (position[None, :] <= position[:, None])))
    valid_cols = torch.cat([torch.ones(batch, num_queries, dtype=torch.bool, device=device),
                            text_mask.bool()], dim=1)
    mask = allowed[None] & valid_cols[:, None, :]
    return mask | torch.eye(total, dtype=torch.bool, device=device)[None]


class Projections(nn.Module):
    def __init__(self, hidden: int, kv_dim: int):
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_dim, hidden)
        self.value = nn.Linear(kv_dim, hidden)


class ResidualNorm(nn.Module):
    """BERT's post-LN residual: LayerNorm(dropout(dense(x)) + residual)."""

    def __init__(self, in_dim: int, hidden: int, eps: float, dropout: float):
        super().__init__()
        self.dense = nn.Linear(in_dim, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(states)) + residual)


class AttentionBlock(nn.Module):
    """Multi-head attention + residual LayerNorm; cross-attention when `kv_dim` is given and used with kv."""

    def __init__(self, hidden: int, heads: int, eps: float, dropout: float, kv_dim: int | None = None):
        super().__init__()
        if hidden % heads:
            raise ConfigError(f"hidden size {hidden} is not divisible by {heads} attention heads")
        self.heads = heads
        self.self = Projections(hidden, kv_dim or hidden)
        self.output = ResidualNorm(hidden, hidden, eps, dropout)
        self.attention_dropout = dropout

    def forward(self, states: torch.Tensor, kv: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        kv = states if kv is None else kv
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731  [B, H, L, d]
        context = F.scaled_dot_product_attention(
            split(self.self.query(states)), split(self.self.key(kv)), split(self.self.value(kv)),
            attn_mask=None if mask is None else mask[:, None],
            dropout_p=self.attention_dropout if self.training else 0.0)
        return self.output(context.transpose(1, 2).flatten(2), states)


class FeedForward(nn.Module):
    """BERT's `intermediate` (dense + GELU) and `output` (dense + residual LayerNorm), as one block."""

    def __init__(self, hidden: int, intermediate: int, eps: float, dropout: float):
        super().__init__()
        self.intermediate = nn.Sequential(nn.Linear(hidden, intermediate), nn.GELU())
        self.output = ResidualNorm(intermediate, hidden, eps, dropout)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.output(self.intermediate(states), states)


class QueryFormerLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float, dropout: float,
                 vision_dim: int | None):
        super().__init__()
        self.attention = AttentionBlock(hidden, heads, eps, dropout)
        self.crossattention = (AttentionBlock(hidden, heads, eps, dropout, kv_dim=vision_dim)
                               if vision_dim is not None else None)
        self.text_ffn = FeedForward(hidden, intermediate, eps, dropout)
        self.query_ffn = FeedForward(hidden, intermediate, eps, dropout)

    def forward(self, states: torch.Tensor, num_queries: int, mask: torch.Tensor,
                image_features: torch.Tensor | None) -> torch.Tensor:
        states = self.attention(states, mask=mask)
        queries, text = states[:, :num_queries], states[:, num_queries:]
        if num_queries and self.crossattention is not None and image_features is not None:
            queries = self.crossattention(queries, kv=image_features)
        parts = []
        if num_queries:
            parts.append(self.query_ffn(queries))
        if text.shape[1]:
            parts.append(self.text_ffn(text))
        return torch.cat(parts, dim=1)

    def forward_text_over_cached_queries(self, text: torch.Tensor, cached_queries: torch.Tensor,
                                         mask: torch.Tensor) -> torch.Tensor:
        """The text rows of this layer, their self-attention keys/values = [cached query states ; text] (LAVIS'
        ITG: `past_key_values` of the query pass). mask: [B, T, Q+T]."""
        text = self.attention(text, kv=torch.cat([cached_queries, text], dim=1), mask=mask)
        return self.text_ffn(text)


class QueryFormer(nn.Module):
    """Queries + BERT text branch. Entry points, one per kind of pass:

    - `encode_queries(image_features)`: queries alone, cross-attending to the image (the query side of ITC
      and what the LLM receives; under ITC's and ITG's masks the queries never see text, so this pass is
      exactly their query side). With `keep_layer_inputs` it also returns each layer's input query states.
    - `encode_text(ids, mask)`: text alone (ITC's [CLS]).
    - `joint(query_states, ids, mask, mode, image_features=None)`: [query slots ; text] under the ITM or ITG
      mask. Without image features the query slots hold given states (the final queries, after X-Former's MAE
      fusion when there is one) and no cross-attention runs; with them the slots start from the learnable
      queries (`initial_queries`) and cross-attend to the image: BLIP-2's ITM pass.
    - `decode_text(query_layer_inputs, ids, mask)`: ITG's text over the query pass's cached per-layer query
      states, as LAVIS reuses that pass's keys/values (same result as re-running the queries in `joint`, and
      the same dropout draws as the query pass).
    """

    def __init__(self, vocab_size: int, hidden: int, layers: int, heads: int, intermediate: int,
                 max_positions: int, num_queries: int, vision_dim: int, cross_attention_every: int = 2,
                 eps: float = 1e-12, dropout: float = 0.1):
        super().__init__()
        if isinstance(num_queries, bool) or not isinstance(num_queries, int) or num_queries < 1:
            raise ConfigError(f"model.connector_options.num_queries must be an integer >= 1, got {num_queries!r}")
        if cross_attention_every < 1:
            raise ConfigError(f"model.connector_options.cross_attention_every must be >= 1, "
                              f"got {cross_attention_every!r}")
        self.hidden_size, self.num_queries, self.vision_dim = hidden, num_queries, vision_dim
        self.query_tokens = nn.Parameter(torch.randn(1, num_queries, hidden) * 0.02)  # BLIP-2's init
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(2, hidden)
        self.embed_norm = nn.LayerNorm(hidden, eps=eps)
        self.embed_dropout = nn.Dropout(dropout)
        self.layer = nn.ModuleList(
            QueryFormerLayer(hidden, heads, intermediate, eps, dropout,
                             vision_dim if i % cross_attention_every == 0 else None) for i in range(layers))
        # ITG's head: BERT's MLM transform; the decoder is tied to the word embeddings.
        self.lm_transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=eps))
        self.lm_bias = nn.Parameter(torch.zeros(vocab_size))

    def _embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        if ids.shape[1] > self.position_embeddings.num_embeddings:
            raise ValueError(f"text of {ids.shape[1]} tokens is longer than the Q-Former's "
                             f"{self.position_embeddings.num_embeddings} positions")
        embedded = (self.word_embeddings(ids) + self.position_embeddings(positions)[None]
                    + self.token_type_embeddings.weight[0])
        return self.embed_dropout(self.embed_norm(embedded))

    def _run(self, states: torch.Tensor, num_queries: int, mask: torch.Tensor, image_features: torch.Tensor | None,
             layer_inputs: list | None = None) -> torch.Tensor:
        """All layers; `layer_inputs`, when given, collects each layer's input states."""
        for layer in self.layer:
            if layer_inputs is not None:
                layer_inputs.append(states)
            states = layer(states, num_queries, mask, image_features)
        return states

    def initial_queries(self, batch: int) -> torch.Tensor:
        """The learnable queries as the first layer sees them (BERT's embedding LayerNorm and dropout)."""
        return self.embed_dropout(self.embed_norm(self.query_tokens.expand(batch, -1, -1)))

    def encode_queries(self, image_features: torch.Tensor, keep_layer_inputs: bool = False):
        """Final query states [B, Q, H]; with keep_layer_inputs also [L, B, Q, H], each layer's input states."""
        if image_features.shape[-1] != self.vision_dim:
            raise ValueError(f"vision features have {image_features.shape[-1]} channels; the Q-Former's "
                             f"cross-attention was built for {self.vision_dim}")
        batch = image_features.shape[0]
        queries = self.initial_queries(batch)
        mask = torch.ones(batch, self.num_queries, self.num_queries, dtype=torch.bool, device=queries.device)
        inputs = [] if keep_layer_inputs else None
        states = self._run(queries, self.num_queries, mask, image_features, inputs)
        return (states, torch.stack(inputs)) if keep_layer_inputs else states

    def encode_text(self, ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        mask = qformer_attention_mask(0, text_mask, "unimodal")
        return self._run(self._embed_text(ids), 0, mask, None)

    def joint(self, query_states: torch.Tensor, ids: torch.Tensor, text_mask: torch.Tensor, mode: str,
              image_features: torch.Tensor | None = None) -> torch.Tensor:
        num_queries = query_states.shape[1]
        mask = qformer_attention_mask(num_queries, text_mask, mode)
        states = torch.cat([query_states, self._embed_text(ids)], dim=1)
        return self._run(states, num_queries, mask, image_features)

    def decode_text(self, query_layer_inputs: torch.Tensor, ids: torch.Tensor,
                    text_mask: torch.Tensor) -> torch.Tensor:
        """Text states [B, T, H] under ITG's mask, attending to the cached query states [L, B, Q, H]."""
        num_queries = query_layer_inputs.shape[2]
        mask = qformer_attention_mask(num_queries, text_mask, "multimodal_causal")[:, num_queries:]
        states = self._embed_text(ids)
        for layer, cached in zip(self.layer, query_layer_inputs):
            states = layer.forward_text_over_cached_queries(states, cached, mask)
        return states

    def lm_logits(self, text_states: torch.Tensor) -> torch.Tensor:
        return self.lm_transform(text_states) @ self.word_embeddings.weight.T + self.lm_bias


# BERT state-dict names -> QueryFormer names (per layer: `{i}` filled in).
_BERT_NAMES = {
    "embeddings.word_embeddings.weight": "word_embeddings.weight",
    "embeddings.position_embeddings.weight": "position_embeddings.weight",
    "embeddings.token_type_embeddings.weight": "token_type_embeddings.weight",
    "embeddings.LayerNorm.weight": "embed_norm.weight",
    "embeddings.LayerNorm.bias": "embed_norm.bias",
}
_BERT_LAYER_NAMES = {
    "attention.self.{p}.{w}": "attention.self.{p}.{w}",
    "attention.output.dense.{w}": "attention.output.dense.{w}",
    "attention.output.LayerNorm.{w}": "attention.output.LayerNorm.{w}",
    "intermediate.dense.{w}": "{ffn}.intermediate.0.{w}",
    "output.dense.{w}": "{ffn}.output.dense.{w}",
    "output.LayerNorm.{w}": "{ffn}.output.LayerNorm.{w}",
}


def bert_to_query_former(bert_state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """Map a BERT encoder's weights onto QueryFormer names; the query FFN gets a copy of the text FFN."""
    mapped = {ours: bert_state[theirs] for theirs, ours in _BERT_NAMES.items()}
    for i in range(layers):
        for theirs, ours in _BERT_LAYER_NAMES.items():
            for p in (("query", "key", "value") if "{p}" in theirs else (None,)):
                for w in ("weight", "bias"):
                    key = f"encoder.layer.{i}." + theirs.format(p=p, w=w)
                    if key not in bert_state:
                        raise ConfigError(f"text encoder weights lack {key!r}: not a BERT-family encoder")
                    for ffn in (("text_ffn", "query_ffn") if "{ffn}" in ours else (None,)):
                        mapped[f"layer.{i}." + ours.format(p=p, w=w, ffn=ffn)] = bert_state[key]
    return {name: tensor.clone() for name, tensor in mapped.items()}


# The pretrained MLM head of a ...ForMaskedLM checkpoint -> the QueryFormer's ITG head (BLIP-2 starts ITG's
# prediction transform and bias from BERT's `cls.predictions.*`; the decoder weight is the word embeddings).
MLM_HEAD_KEYS = {
    "cls.predictions.transform.dense.weight": "lm_transform.0.weight",
    "cls.predictions.transform.dense.bias": "lm_transform.0.bias",
    "cls.predictions.transform.LayerNorm.weight": "lm_transform.2.weight",
    "cls.predictions.transform.LayerNorm.bias": "lm_transform.2.bias",
    "cls.predictions.bias": "lm_bias",
    "lm_head.dense.weight": "lm_transform.0.weight", "lm_head.dense.bias": "lm_transform.0.bias",  # RoBERTa's
    "lm_head.layer_norm.weight": "lm_transform.2.weight", "lm_head.layer_norm.bias": "lm_transform.2.bias",
    "lm_head.bias": "lm_bias",
}


def load_text_encoder(location: str):
    """(the encoder, its pretrained MLM head as QueryFormer tensors, or {} when the checkpoint has none:
    sentence-embedding checkpoints such as MiniLM-L6 ship the encoder alone, and the head then starts fresh)."""
    from transformers import AutoModel, AutoModelForMaskedLM  # see build_query_former

    try:
        mlm, info = AutoModelForMaskedLM.from_pretrained(location, output_loading_info=True)
    except ValueError:  # an encoder type without a masked-LM class
        return AutoModel.from_pretrained(location), {}
    missing, state = set(info.get("missing_keys", ())), mlm.state_dict()
    head = {ours: state[theirs].clone() for theirs, ours in MLM_HEAD_KEYS.items()
            if theirs in state and theirs not in missing}
    return mlm.base_model, head if len(head) == 5 else {}


def build_query_former(text_source: str, num_queries: int, vision_dim: int, cross_attention_every: int = 2,
                       dropout: float = 0.1):
    """A QueryFormer initialised from a BERT-family encoder, plus its tokenizer with a [DEC] token added."""
    # Imported here, as in mae_branch: the config checks import this module and should start fast.
    from transformers import AutoTokenizer

    location = parse_source(text_source).location
    bert, mlm_head = load_or_explain(location, "Q-Former text encoder", lambda: load_text_encoder(location))
    config = bert.config
    if getattr(config, "model_type", "") not in ("bert", "roberta", "xlm-roberta", "electra"):
        raise ConfigError(f"Q-Former text encoder {text_source!r} is a {getattr(config, 'model_type', '?')} "
                          f"model; it needs a BERT-family encoder (e.g. bert-base-uncased, minilm-l6)")
    tokenizer = load_or_explain(location, "Q-Former text tokenizer", lambda: AutoTokenizer.from_pretrained(location))
    former = QueryFormer(config.vocab_size, config.hidden_size, config.num_hidden_layers,
                         config.num_attention_heads, config.intermediate_size, config.max_position_embeddings,
                         num_queries, vision_dim, cross_attention_every, config.layer_norm_eps, dropout)
    former.load_state_dict({**bert_to_query_former(bert.state_dict(), config.num_hidden_layers), **mlm_head},
                           strict=False)
    # ITG's first text token (BLIP-2): a new [DEC] token, its embedding started from [CLS]'s.
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    dec_id = tokenizer.convert_tokens_to_ids("[DEC]")
    if dec_id >= former.word_embeddings.num_embeddings:
        grown = nn.Embedding(dec_id + 1, former.hidden_size)
        with torch.no_grad():
            grown.weight[:former.word_embeddings.num_embeddings] = former.word_embeddings.weight
            grown.weight[dec_id] = former.word_embeddings.weight[tokenizer.cls_token_id]
            bias = torch.zeros(dec_id + 1)
            bias[:former.lm_bias.numel()] = former.lm_bias  # the pretrained MLM bias, 0 for [DEC]
        former.word_embeddings = grown
        former.lm_bias = nn.Parameter(bias)
    return former, tokenizer
