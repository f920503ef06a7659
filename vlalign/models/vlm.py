"""VisionLanguageModel: vision tower -> connector -> causal LLM, spliced with one masked_scatter.

Module names follow transformers' LlavaForConditionalGeneration checkpoints (`vision_tower.*`,
`multi_modal_projector.*`, `language_model.*`), so exporting to the ecosystem format is a rename of the
tower's inner prefix at most, not a rewrite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from vlalign.config import ModelConfig
from vlalign.models.connectors import ConnectorOutput, build_connector
from vlalign.models.llm import load_llm
from vlalign.models.vision import VisionTower, load_vision_tower


@dataclass(frozen=True)
class ForwardRequest:
    """What the objectives need from a forward pass, declared by each objective and merged once per run."""

    run_llm: bool = True  # False: tower and connector only (Q-Former pre-training has no LLM term)
    connector_aux: frozenset[str] = frozenset()  # auxiliary connector outputs, e.g. {"reconstruction"}

    @staticmethod
    def merge(requests) -> "ForwardRequest":
        requests = list(requests)
        return ForwardRequest(run_llm=any(r.run_llm for r in requests) if requests else True,
                              connector_aux=frozenset().union(*(r.connector_aux for r in requests)))


@dataclass
class ModelOutput:
    """Everything objectives read; none of them re-runs the model."""

    hidden_states: torch.Tensor  # [B, T, D] final (normed) LLM hidden states
    attention_mask: torch.Tensor  # [B, T]
    image_mask: torch.Tensor  # [B, T] bool: where visual tokens sit
    visual_tokens: torch.Tensor | None  # [num_images, Nv, D] projected, before the LLM
    inputs_embeds: torch.Tensor | None  # [B, T, D] what the LLM saw
    lm_head: nn.Module
    # Named auxiliary connector tensors (e.g. a query connector's final_queries); empty without images.
    connector_aux: dict[str, torch.Tensor] = field(default_factory=dict)

    def logits_at(self, positions: torch.Tensor) -> torch.Tensor:
        """Logits [K, V] at the K True positions of a [B, T] mask: avoids a full [B, T, V] tensor."""
        return self.lm_head(self.hidden_states[positions])

    @property
    def logits(self) -> torch.Tensor:
        return self.lm_head(self.hidden_states)


class VisionLanguageModel(nn.Module):
    def __init__(self, vision_tower: VisionTower, multi_modal_projector: nn.Module, language_model: nn.Module,
                 tokenizer, image_token_id: int, config: ModelConfig):
        super().__init__()
        self.vision_tower = vision_tower
        self.multi_modal_projector = multi_modal_projector
        self.language_model = language_model
        self.tokenizer = tokenizer
        self.image_token_id = image_token_id
        self.config = config

    @classmethod
    def from_config(cls, config: ModelConfig) -> "VisionLanguageModel":
        tower = load_vision_tower(config.vision_tower, config.vision_feature_layer,
                                  config.vision_feature_select, config.image_size, config.vision_feature_stage)
        language_model, tokenizer, image_token_id = load_llm(config.llm, config.image_token,
                                                             config.attn_implementation)
        llm_dim = language_model.get_input_embeddings().weight.shape[1]
        connector = build_connector(config.connector, tower.hidden_size, llm_dim, config.connector_options,
                                    tower_stats=(tower.image_mean, tower.image_std))
        if config.gradient_checkpointing:
            # Non-reentrant, so a frozen LLM fed trainable visual tokens still gets gradients through.
            if hasattr(language_model, "activation_checkpointing_enable"):  # transformers >= 5.x name
                language_model.activation_checkpointing_enable({"use_reentrant": False})
            else:
                language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return cls(tower, connector, language_model, tokenizer, image_token_id, config)

    @property
    def num_visual_tokens(self) -> int:
        """The one place that decides how many `<image>` placeholders a prompt gets."""
        return self.multi_modal_projector.output_tokens(self.vision_tower.num_prefix_tokens, self.vision_tower.grid)

    @property
    def hidden_size(self) -> int:
        return self.language_model.get_input_embeddings().weight.shape[1]

    def token_grid(self) -> tuple[int, int, int] | None:
        """(prefix tokens, rows, cols) of the visual tokens, or None for a connector without a patch grid."""
        window = self.multi_modal_projector.window
        if window is None:
            return None
        rows, cols = (math.ceil(side / window) for side in self.vision_tower.grid)
        prefix = self.num_visual_tokens - rows * cols
        return (prefix, rows, cols) if prefix >= 0 else None

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encode_images_with_aux(pixel_values).tokens

    def encode_images_with_aux(self, pixel_values: torch.Tensor | None, aux: frozenset[str] = frozenset(),
                               vision_features: torch.Tensor | None = None) -> ConnectorOutput:
        """Visual tokens [num_images, Nv, D] and the auxiliary connector tensors named in `aux`.
        `vision_features`: the frozen tower's output, cached (vlalign.data.feature_store): the tower does not run."""
        if vision_features is not None:
            vision_tokens = vision_features.float()
        else:
            tower_trains = any(p.requires_grad for p in self.vision_tower.parameters())
            with torch.set_grad_enabled(tower_trains and torch.is_grad_enabled()):
                vision_tokens = self.vision_tower(pixel_values)
        encoded = self.multi_modal_projector.encode(vision_tokens, self.vision_tower.grid, pixel_values, aux)
        if encoded.tokens.shape[1] != self.num_visual_tokens:
            raise RuntimeError(f"connector produced {encoded.tokens.shape[1]} tokens, expected {self.num_visual_tokens}")
        return encoded

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None, encoded=None,
              visual_keep: torch.Tensor | None = None):
        """Token embeddings with every `<image>` placeholder replaced, in order, by a visual token.
        `encoded`: visual tokens already computed for these pixel values. `visual_keep` [num_images, k]: the
        placeholders stand for these visual tokens of each image only (train.visual_token_drop); the visual
        tokens returned are still all of them."""
        image_mask = input_ids == self.image_token_id
        inputs_embeds = self.language_model.get_input_embeddings()(input_ids)
        n_placeholders = int(image_mask.sum())
        if pixel_values is None or pixel_values.shape[0] == 0:
            if n_placeholders:
                raise ValueError(f"batch has {n_placeholders} <image> placeholders but no images")
            return inputs_embeds, image_mask, None
        visual_tokens = self.encode_images(pixel_values) if encoded is None else encoded
        shown = visual_tokens
        if visual_keep is not None:
            index = visual_keep.to(visual_tokens.device)[..., None].expand(-1, -1, visual_tokens.shape[-1])
            shown = visual_tokens.gather(1, index)
        if n_placeholders != shown.shape[0] * shown.shape[1]:
            raise ValueError(f"image features and image tokens do not match: {n_placeholders} placeholders, "
                             f"{shown.shape[0]} images x {shown.shape[1]} visual tokens")
        spliced = inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), shown.to(inputs_embeds.dtype))
        return spliced, image_mask, visual_tokens

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                pixel_values: torch.Tensor | None = None, request: ForwardRequest = ForwardRequest(),
                position_ids: torch.Tensor | None = None, vision_features: torch.Tensor | None = None,
                visual_keep: torch.Tensor | None = None) -> ModelOutput:
        """`request`: what the objectives need (an LLM pass or not, auxiliary connector outputs).
        `position_ids`: a packed batch's (vlalign.data.packing); the LLM then gets no 2D attention mask and
        builds the per-sample block-diagonal causal mask from them (transformers' packed-sequence path).
        `vision_features`: the tower's cached output in place of `pixel_values`; `visual_keep`: see `embed`."""
        images = pixel_values if pixel_values is not None else vision_features
        has_images = images is not None and images.shape[0] > 0
        encoded = (self.encode_images_with_aux(pixel_values, request.connector_aux, vision_features)
                   if has_images else None)
        visual_tokens, aux = (encoded.tokens, encoded.aux) if encoded is not None else (None, {})
        lm_head = self.language_model.get_output_embeddings()
        if not request.run_llm:
            return ModelOutput(hidden_states=None, attention_mask=attention_mask, image_mask=None,
                               visual_tokens=visual_tokens, inputs_embeds=None, lm_head=lm_head, connector_aux=aux)
        inputs_embeds, image_mask, visual_tokens = self.embed(input_ids, images, visual_tokens, visual_keep)
        decoder_output = self.language_model.get_decoder()(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask if position_ids is None else None,
            position_ids=position_ids, use_cache=False)
        return ModelOutput(hidden_states=decoder_output.last_hidden_state, attention_mask=attention_mask,
                           image_mask=image_mask, visual_tokens=visual_tokens, inputs_embeds=inputs_embeds,
                           lm_head=lm_head, connector_aux=aux)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 pixel_values: torch.Tensor | None = None, **generation_kwargs) -> torch.Tensor:
        """New token ids only (inputs are embeddings, so HF's generate returns just the continuation).
        Inputs built on the CPU follow the model to its device (eval and `generate` on a GPU)."""
        device = self.language_model.get_input_embeddings().weight.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        if pixel_values is not None:
            pixel_values = pixel_values.to(device)
        inputs_embeds, _, _ = self.embed(input_ids, pixel_values)
        generation_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        return self.language_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                            use_cache=True, **generation_kwargs)

    def components(self) -> dict[str, nn.Module]:
        return {"vision_tower": self.vision_tower, "multi_modal_projector": self.multi_modal_projector,
                "language_model": self.language_model}
