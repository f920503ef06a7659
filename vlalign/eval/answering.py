"""Batched greedy answers from a vision-language model, the one place evaluation generates text."""

from __future__ import annotations

import torch
from PIL import Image

from vlalign.data.build import image_transform_for, read_chat_template
from vlalign.data.templates import prompt_ids


def prompt_row(model, config, question: str, has_image: bool) -> list[int]:
    """The token ids of one question as the checkpoint was trained to read it (data format, chat template,
    system prompt; the image placeholders first), ending where the answer starts."""
    return prompt_ids(model.tokenizer, config.data.format, question, model.image_token_id if has_image else None,
                      model.num_visual_tokens, config.data.system_prompt, read_chat_template(config.data.chat_template))


def stacked_pixels(images: list[torch.Tensor | None]) -> torch.Tensor | None:
    """The batch's images in row order (rows without one get none: the model splices per placeholder)."""
    present = [image for image in images if image is not None]
    return torch.stack(present) if present else None


@torch.no_grad()
def answer_batch(model, config, questions: list[str], images: list[torch.Tensor | None],
                 max_new_tokens: int = 12, **generation) -> list[str]:
    """Answers for a batch of prompts, left-padded so every prompt ends where generation starts. Greedy
    unless `generation` asks otherwise (do_sample, temperature, top_p, num_beams: HF generate's)."""
    tokenizer = model.tokenizer
    rows = [prompt_row(model, config, question, image is not None) for question, image in zip(questions, images)]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, width - len(row):] = torch.tensor(row)
        attention_mask[index, width - len(row):] = 1
    settings = {"do_sample": False, **generation}
    new_tokens = model.generate(input_ids, attention_mask, stacked_pixels(images), max_new_tokens=max_new_tokens,
                                **settings)
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def blank_image(model) -> Image.Image:
    """The tower's mean colour: zero after normalisation, so the image carries no information."""
    transform = image_transform_for(model)
    colour = tuple(int(round(c * 255)) for c in transform.mean)
    return Image.new("RGB", (transform.size, transform.size), colour)
