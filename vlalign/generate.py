"""Load a stage checkpoint and answer a prompt about an image (greedy or sampling, with KV cache)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from vlalign.data.build import image_transform_for, read_chat_template
from vlalign.data.images import load_image
from vlalign.data.templates import prompt_ids
from vlalign.errors import DataError
from vlalign.train.load import load_checkpoint_model, resolve_checkpoint

__all__ = ["answer", "check_prompt", "load_checkpoint_model", "read_image", "resolve_checkpoint"]


def check_prompt(prompt: str, image_token: str, has_image: bool) -> None:
    """A LLaVA-style prompt may place the image itself ("<image>\nWhat is this?"), once, and only with an image."""
    count = prompt.count(image_token)
    if count > 1:
        raise DataError(f"holds {image_token} {count} times; one image is answered about at a time",
                        reason="image_placeholder", field="prompt")
    if count and not has_image:
        raise DataError(f"holds {image_token} but no image was given (--image)", reason="image_placeholder",
                        field="prompt")


def read_image(path: str | Path) -> Image.Image:
    """The image decoded now (a bad file is a one-line error naming it, before any model loads)."""
    try:
        return load_image(path)
    except OSError as error:
        raise DataError(str(error), reason="image", file=str(path)) from None


@torch.no_grad()
def answer(model, config, image: str | Path | Image.Image | None, prompt: str, *, max_new_tokens: int = 64,
           do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0) -> str:
    has_image = image is not None
    check_prompt(prompt, config.model.image_token, has_image)
    ids = prompt_ids(model.tokenizer, config.data.format, prompt, model.image_token_id if has_image else None,
                     model.num_visual_tokens, config.data.system_prompt,
                     read_chat_template(config.data.chat_template))
    input_ids = torch.tensor([ids])
    if has_image and not isinstance(image, Image.Image):
        image = read_image(image)
    pixel_values = image_transform_for(model)(image).unsqueeze(0) if has_image else None
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    new_tokens = model.generate(input_ids, torch.ones_like(input_ids), pixel_values, **kwargs)
    return model.tokenizer.decode(new_tokens[0], skip_special_tokens=True).strip()
