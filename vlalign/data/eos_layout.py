"""The token layout of end-of-sequence embedding inputs (Ak et al., sec. 3.2 and 3.4).

An embedding is the LLM's final hidden state at an [EOS] token appended to the input. With prompts
(sec. 3.4, after PromptBERT) the inputs are

    This sentence: {text} means: [EOS]
    This {photo|image|picture}: {<image>} means: [EOS]

and without them just `{text}[EOS]` / `{<image>}[EOS]`. This module is the one definition of the layout: the
`eos_contrastive` objective trains on it and `vlalign eval alignment` measures it, so a before/after
comparison compares the same thing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

# (head, tail) around the text / the visual tokens; the text is tokenized with a leading space.
TEXT_TEMPLATE = ("This sentence:", " means:")
IMAGE_TEMPLATE = ("This {noun}:", " means:")
IMAGE_NOUNS = ("photo", "image", "picture")
EVAL_IMAGE_NOUN = "image"  # evaluation is deterministic; training draws one of IMAGE_NOUNS per image


@dataclass
class EosInputs:
    input_ids: torch.Tensor  # [B, T], right-padded
    attention_mask: torch.Tensor  # [B, T]
    eos_positions: torch.Tensor  # [B]: index of each row's [EOS]
    truncated: list[int]  # rows whose text was cut to fit max_length


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; EOS embeddings need one (set tokenizer.eos_token)")
    return tokenizer.eos_token_id


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"] if text else []


def text_prompt_ids(tokenizer, text: str, prompt: bool = True, max_length: int | None = None) -> tuple[list[int], bool]:
    """Token ids of one text's EOS input, and whether the text had to be shortened to fit `max_length`."""
    start = _ids(tokenizer, TEXT_TEMPLATE[0] if prompt else "", special=True)  # the BOS, if the tokenizer adds one
    body = _ids(tokenizer, " " + text if prompt else text, special=False)
    end = (_ids(tokenizer, TEXT_TEMPLATE[1], special=False) if prompt else []) + [_eos_id(tokenizer)]
    truncated = False
    if max_length is not None and len(start) + len(body) + len(end) > max_length:
        keep = max_length - len(start) - len(end)
        if keep < 1:
            raise ValueError(f"max_length {max_length} leaves no room for the text in the EOS prompt")
        body, truncated = body[:keep], True
    return start + body + end, truncated


def image_prompt_ids(tokenizer, image_token_id: int, num_visual_tokens: int, prompt: bool = True,
                     noun: str = EVAL_IMAGE_NOUN) -> list[int]:
    """Token ids of one image's EOS input: the `<image>` placeholder already expanded to its visual tokens."""
    if prompt:
        head, tail = IMAGE_TEMPLATE
        start = _ids(tokenizer, head.format(noun=noun), special=True)
        end = _ids(tokenizer, tail, special=False)
    else:
        start, end = _ids(tokenizer, "", special=True), []
    return start + [image_token_id] * num_visual_tokens + end + [_eos_id(tokenizer)]


def right_pad(rows: list[list[int]], pad_id: int, truncated: list[int] | None = None) -> EosInputs:
    if not rows:
        raise ValueError("no inputs to embed")
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, :len(row)] = torch.tensor(row)
        attention_mask[index, :len(row)] = 1
    positions = torch.tensor([len(row) - 1 for row in rows])
    return EosInputs(input_ids, attention_mask, positions, truncated or [])


def text_inputs(tokenizer, texts: list[str], prompt: bool = True, max_length: int | None = None) -> EosInputs:
    rows, truncated = [], []
    for index, text in enumerate(texts):
        ids, cut = text_prompt_ids(tokenizer, text, prompt, max_length)
        rows.append(ids)
        if cut:
            truncated.append(index)
    return right_pad(rows, tokenizer.pad_token_id, truncated)


def image_inputs(tokenizer, image_token_id: int, num_visual_tokens: int, n_images: int, prompt: bool = True,
                 rng: random.Random | None = None) -> EosInputs:
    """`rng` given: each image's noun drawn from IMAGE_NOUNS (training); else the fixed evaluation noun."""
    nouns = [rng.choice(IMAGE_NOUNS) if rng is not None else EVAL_IMAGE_NOUN for _ in range(n_images)]
    rows = [image_prompt_ids(tokenizer, image_token_id, num_visual_tokens, prompt, noun) for noun in nouns]
    return right_pad(rows, tokenizer.pad_token_id)


READ_POSITIONS = ("eos", "before_eos")


def read_positions(eos_positions: torch.Tensor, read: str = "eos") -> torch.Tensor:
    """Which state is the embedding: the appended [EOS] itself (Ak et al.) or the token just before it
    (the prompt's last token, "means:", PromptBERT's [MASK]-like slot; or the text's last token)."""
    if read not in READ_POSITIONS:
        raise ValueError(f"read must be one of {READ_POSITIONS}, got {read!r}")
    return eos_positions - 1 if read == "before_eos" else eos_positions
