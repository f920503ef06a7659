"""Load a stage checkpoint and answer a prompt about an image (greedy or sampling, with KV cache)."""

from __future__ import annotations

from pathlib import Path

import torch

from vlalign.data.build import image_transform_for, read_chat_template
from vlalign.data.images import load_image
from vlalign.data.templates import prompt_ids
from vlalign.train.load import load_checkpoint_model, resolve_checkpoint

__all__ = ["answer", "load_checkpoint_model", "resolve_checkpoint"]


@torch.no_grad()
def answer(model, config, image_path: str | Path | None, prompt: str, *, max_new_tokens: int = 64,
           do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0) -> str:
    has_image = image_path is not None
    ids = prompt_ids(model.tokenizer, config.data.format, prompt, model.image_token_id if has_image else None,
                     model.num_visual_tokens, config.data.system_prompt,
                     read_chat_template(config.data.chat_template))
    input_ids = torch.tensor([ids])
    pixel_values = image_transform_for(model)(load_image(image_path)).unsqueeze(0) if has_image else None
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    new_tokens = model.generate(input_ids, torch.ones_like(input_ids), pixel_values, **kwargs)
    return model.tokenizer.decode(new_tokens[0], skip_special_tokens=True).strip()
