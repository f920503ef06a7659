"""VisionLanguageModel: vision tower -> connector -> causal LLM, spliced with one masked_scatter.

Module names follow transformers' LlavaForConditionalGeneration checkpoints (`vision_tower.*`,
`multi_modal_projector.*`, `language_model.*`), so exporting to the ecosystem format is a rename of the
tower's inner prefix at most, not a rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlalign.config import ModelConfig
from vlalign.models.connectors import build_connector
from vlalign.models.llm import load_llm
from vlalign.models.vision import VisionTower, load_vision_tower


@dataclass
class ModelOutput:
    """Everything objectives read; none of them re-runs the model."""

    hidden_states: torch.Tensor  # [B, T, D] final (normed) LLM hidden states
    attention_mask: torch.Tensor  # [B, T]
    image_mask: torch.Tensor  # [B, T] bool: where visual tokens sit
    visual_tokens: torch.Tensor | None  # [num_images, Nv, D] projected, before the LLM
    inputs_embeds: torch.Tensor | None  # [B, T, D] what the LLM saw
    lm_head: nn.Module
    connector_output: Any = None  # what a query connector hands its stage-1 objective (QueryOutput)

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

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encode_images_with_extras(pixel_values)[0]

    def encode_images_with_extras(self, pixel_values: torch.Tensor):
        """(visual tokens [num_images, Nv, D], the connector's extras for its objectives or None)."""
        tower_trains = any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(tower_trains and torch.is_grad_enabled()):
            vision_tokens = self.vision_tower(pixel_values)
        visual_tokens, extras = self.multi_modal_projector.encode(vision_tokens, self.vision_tower.grid, pixel_values)
        if visual_tokens.shape[1] != self.num_visual_tokens:
            raise RuntimeError(f"connector produced {visual_tokens.shape[1]} tokens, expected {self.num_visual_tokens}")
        return visual_tokens, extras

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None, encoded=None):
        """Token embeddings with every `<image>` placeholder replaced, in order, by a visual token.
        `encoded`: visual tokens already computed for these pixel values."""
        image_mask = input_ids == self.image_token_id
        inputs_embeds = self.language_model.get_input_embeddings()(input_ids)
        n_placeholders = int(image_mask.sum())
        if pixel_values is None or pixel_values.shape[0] == 0:
            if n_placeholders:
                raise ValueError(f"batch has {n_placeholders} <image> placeholders but no images")
            return inputs_embeds, image_mask, None
        visual_tokens = self.encode_images(pixel_values) if encoded is None else encoded
        if n_placeholders != visual_tokens.shape[0] * visual_tokens.shape[1]:
            raise ValueError(f"image features and image tokens do not match: {n_placeholders} placeholders, "
                             f"{visual_tokens.shape[0]} images x {visual_tokens.shape[1]} visual tokens")
        spliced = inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), visual_tokens.to(inputs_embeds.dtype))
        return spliced, image_mask, visual_tokens

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                pixel_values: torch.Tensor | None = None, run_llm: bool = True) -> ModelOutput:
        """run_llm=False: vision tower and connector only (Q-Former pre-training needs no LLM pass)."""
        has_images = pixel_values is not None and pixel_values.shape[0] > 0
        visual_tokens, extras = self.encode_images_with_extras(pixel_values) if has_images else (None, None)
        lm_head = self.language_model.get_output_embeddings()
        if not run_llm:
            return ModelOutput(hidden_states=None, attention_mask=attention_mask, image_mask=None,
                               visual_tokens=visual_tokens, inputs_embeds=None, lm_head=lm_head,
                               connector_output=extras)
        inputs_embeds, image_mask, visual_tokens = self.embed(input_ids, pixel_values, visual_tokens)
        decoder_output = self.language_model.get_decoder()(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False)
        return ModelOutput(hidden_states=decoder_output.last_hidden_state, attention_mask=attention_mask,
                           image_mask=image_mask, visual_tokens=visual_tokens, inputs_embeds=inputs_embeds,
                           lm_head=lm_head, connector_output=extras)

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
