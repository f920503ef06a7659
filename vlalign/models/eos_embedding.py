"""End-of-sequence embeddings of images and texts from the LLM (Ak et al., sec. 3.2 and 3.4).

f(x) is the LLM's final (normed) hidden state at the [EOS] appended to the input; the inputs (with or
without PromptBERT-style prompts) are laid out by vlalign.data.eos_layout. The `eos_contrastive`
objective trains on this definition and `vlalign eval alignment` measures it.
"""

from __future__ import annotations

import random

import torch

from vlalign.data.eos_layout import image_inputs, text_inputs


def eos_states(hidden_states: torch.Tensor, eos_positions: torch.Tensor) -> torch.Tensor:
    """[B, T, D] final hidden states -> [B, D] at each row's EOS position."""
    rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
    return hidden_states[rows, eos_positions.to(hidden_states.device)]


def embed_texts(model, texts: list[str], prompt: bool = True, max_length: int | None = None) -> tuple[torch.Tensor, list[int]]:
    """([B, D] EOS embeddings, indices of texts truncated to fit)."""
    inputs = text_inputs(model.tokenizer, texts, prompt, max_length)
    device = model.language_model.get_input_embeddings().weight.device
    output = model(inputs.input_ids.to(device), inputs.attention_mask.to(device), None)
    return eos_states(output.hidden_states, inputs.eos_positions), inputs.truncated


def embed_images(model, pixel_values: torch.Tensor, prompt: bool = True,
                 rng: random.Random | None = None) -> torch.Tensor:
    inputs = image_inputs(model.tokenizer, model.image_token_id, model.num_visual_tokens, pixel_values.shape[0],
                          prompt, rng)
    device = model.language_model.get_input_embeddings().weight.device
    output = model(inputs.input_ids.to(device), inputs.attention_mask.to(device), pixel_values.to(device))
    return eos_states(output.hidden_states, inputs.eos_positions)
