"""Records -> token ids + labels, with label masks taken from the tokenizer's own chat template.

How the assistant spans are found: for assistant turn i, the template rendered up to turn i with the
generation prompt must be a prefix of the template rendered through turn i; the characters in between
are what the assistant says (content + the template's end-of-turn marker). Tokens whose character
offsets lie inside those spans are supervised. A self-check then decodes the supervised tokens of each
span and compares them with the span's text: any template or tokenizer that breaks the assumptions
(LLaVA #1166/#1706: silently all-masked samples) is an error naming the record, never a zero loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlalign.data.eos_layout import image_prompt_ids
from vlalign.data.llava_json import Record
from vlalign.errors import DataError

IGNORE_INDEX = -100


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    truncated: bool
    # What a layout adds beyond ids and labels, for the sample fields (e.g. image_eos_position).
    layout_fields: dict = field(default_factory=dict)


def _fail(record: Record, message: str, reason: str) -> DataError:
    return DataError(message, reason=reason, record_id=record.id, file=record.source_file)


def _render(tokenizer, messages, chat_template, add_generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         chat_template=chat_template)


def chat_text_and_spans(record: Record, tokenizer, system_prompt: str | None,
                        chat_template: str | None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) character spans of each assistant turn."""
    if tokenizer.chat_template is None and chat_template is None:
        raise _fail(record, "the tokenizer has no chat template; set data.chat_template", "no_chat_template")
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    spans, renders = [], []
    for turn in record.turns:
        if turn.role == "assistant":
            prefix = _render(tokenizer, messages, chat_template, add_generation_prompt=True)
            messages.append({"role": "assistant", "content": turn.text})
            through = _render(tokenizer, messages, chat_template)
            if not through.startswith(prefix):
                raise _fail(record, "chat template renders the assistant turn differently from its generation "
                                    "prompt; cannot locate the answer to supervise", "template_mismatch")
            if turn.text.strip() not in through[len(prefix):]:
                raise _fail(record, "chat template drops or rewrites the assistant text", "template_mismatch")
            spans.append((len(prefix), len(through)))
            renders.append(through)
        else:
            messages.append({"role": "user", "content": turn.text})
    full = _render(tokenizer, messages, chat_template)
    if not all(full.startswith(render) for render in renders):
        raise _fail(record, "chat template output is not stable as turns are added", "template_mismatch")
    return full, spans


def plain_text_and_spans(record: Record, image_token: str) -> tuple[str, list[tuple[int, int]]]:
    """LLaVA `plain` (stage 1): the image, then the caption; only the caption (+ EOS) is supervised."""
    if record.image is None:
        raise _fail(record, "the plain (stage-1) format needs an image", "plain_needs_image")
    if len(record.turns) != 2:
        raise _fail(record, f"the plain (stage-1) format needs one human/gpt pair, got {len(record.turns)} turns",
                    "plain_needs_one_pair")
    caption = record.turns[1].text.strip()
    text = image_token + caption
    return text, [(len(image_token), len(text))]


def _supervised_mask(offsets, spans) -> list[bool]:
    mask = []
    for start, end in offsets:
        mask.append(end > start and any(s <= start and end <= e for s, e in spans))
    return mask


def tokenize_plain_with_image_eos(record: Record, tokenizer, image_token_id: int, num_visual_tokens: int,
                                  max_length: int, prompt: bool, noun: str) -> Tokenized:
    """Stage-1 layout for `eos_contrastive`: the image's own EOS input, then the caption.

        [This {noun}:] <image> [ means:] [EOS] caption [EOS]

    The first part is token for token what `eos_layout.image_prompt_ids` builds, so under causal
    attention the final hidden state at that first [EOS] is exactly the image embedding f(g(x)) of
    Ak et al. (it cannot see the caption after it), read from the same forward pass that computes the
    caption loss. Only the caption and its closing EOS are supervised.
    """
    image_token = tokenizer.convert_ids_to_tokens(image_token_id)
    plain_text_and_spans(record, image_token)  # the same record checks as the plain format
    head = image_prompt_ids(tokenizer, image_token_id, 1, prompt, noun)
    caption = record.turns[1].text.strip()
    caption_ids = tokenizer(caption, add_special_tokens=False)["input_ids"]
    ids = head + caption_ids + [tokenizer.eos_token_id]
    supervised = [False] * len(head) + [True] * (len(caption_ids) + 1)
    _self_check(record, tokenizer, caption, ids, supervised, [(0, len(caption))], "plain")
    tokens = _expand_and_truncate(record, ids, supervised, image_token_id, num_visual_tokens, max_length)
    tokens.layout_fields["image_eos_position"] = len(head) - 1 + num_visual_tokens - 1
    return tokens


def tokenize_record(record: Record, tokenizer, fmt: str, image_token_id: int, num_visual_tokens: int,
                    max_length: int, system_prompt: str | None = None,
                    chat_template: str | None = None) -> Tokenized:
    image_token = tokenizer.convert_ids_to_tokens(image_token_id)
    if fmt == "plain":
        text, spans = plain_text_and_spans(record, image_token)
        encoded = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    else:
        text, spans = chat_text_and_spans(record, tokenizer, system_prompt, chat_template)
        # Chat templates write BOS and friends themselves.
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    supervised = _supervised_mask(encoded["offset_mapping"], spans)
    if fmt == "plain":  # teach the model to stop after the caption
        ids.append(tokenizer.eos_token_id)
        supervised.append(True)
    _self_check(record, tokenizer, text, ids, supervised, spans, fmt)
    return _expand_and_truncate(record, ids, supervised, image_token_id, num_visual_tokens, max_length)


def _self_check(record, tokenizer, text, ids, supervised, spans, fmt) -> None:
    expected = "".join(text[s:e] for s, e in spans)
    if fmt == "plain":
        expected += tokenizer.eos_token
    got = tokenizer.decode([i for i, keep in zip(ids, supervised) if keep], skip_special_tokens=False)
    if not any(supervised):
        raise _fail(record, "no token is supervised (all labels masked)", "label_mask_mismatch")
    # Whitespace at span edges may be merged into neighbouring tokens by some tokenizers; content may not.
    if got.split() != expected.split():
        raise _fail(record, f"supervised tokens decode to {got[:120]!r}, expected the assistant turns "
                            f"{expected[:120]!r}: the chat template and tokenizer disagree", "label_mask_mismatch")


def _expand_and_truncate(record, ids, supervised, image_token_id, num_visual_tokens, max_length) -> Tokenized:
    positions = [i for i, token in enumerate(ids) if token == image_token_id]
    expected = 1 if record.image is not None else 0
    if len(positions) != expected:
        raise _fail(record, f"expected {expected} image placeholder token(s) after templating, found "
                            f"{len(positions)}", "image_tag_count")
    if any(supervised[i] for i in positions):
        raise _fail(record, "an image placeholder falls inside a supervised span", "image_tag_count")
    input_ids, labels = [], []
    image_end = 0
    for token, keep in zip(ids, supervised):
        if token == image_token_id:
            input_ids.extend([image_token_id] * num_visual_tokens)
            labels.extend([IGNORE_INDEX] * num_visual_tokens)
            image_end = len(input_ids)
        else:
            input_ids.append(token)
            labels.append(token if keep else IGNORE_INDEX)
    truncated = len(input_ids) > max_length
    if truncated:
        # Cut text only: visual tokens are never split, or the splice would misalign.
        if image_end >= max_length:
            raise _fail(record, f"max_length {max_length} cannot hold the {num_visual_tokens} visual tokens "
                                f"plus any text", "too_long")
        input_ids, labels = input_ids[:max_length], labels[:max_length]
        if all(label == IGNORE_INDEX for label in labels):
            raise _fail(record, f"no supervised token left after truncation to {max_length}", "too_long")
    return Tokenized(input_ids, labels, truncated)


def prompt_ids(tokenizer, fmt: str, prompt: str, image_token_id: int | None, num_visual_tokens: int,
               system_prompt: str | None = None, chat_template: str | None = None) -> list[int]:
    """Token ids of a generation prompt, laid out exactly as in training, with placeholders expanded. A prompt
    that already holds the image token (LLaVA-style "<image>\nWhat is this?") keeps it where it is written."""
    image_token = tokenizer.convert_ids_to_tokens(image_token_id) if image_token_id is not None else ""
    placed = bool(image_token) and image_token in prompt
    if fmt == "plain":
        ids = tokenizer(prompt if placed else image_token + prompt, add_special_tokens=True)["input_ids"]
    else:
        content = f"{image_token}\n{prompt}" if image_token and not placed else prompt
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
        messages.append({"role": "user", "content": content})
        text = _render(tokenizer, messages, chat_template, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    expanded = []
    for token in ids:
        expanded.extend([token] * num_visual_tokens if token == image_token_id else [token])
    return expanded
