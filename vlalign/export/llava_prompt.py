"""The text and pixel side of the llava export: chat template, LlavaProcessor settings, and the checks that the
exported processor lays out a prompt token for token, and an image pixel for pixel, as vlalign does.

Where vlalign puts the image (vlalign.data.templates.prompt_ids): in the `chat` format the user turn's content is
`<image>\\n{question}`, rendered with the stage's chat template (data.chat_template or the tokenizer's own, plus
data.system_prompt) and tokenized without extra special tokens; in the `plain` (stage-1) format the prompt is
`<image>{text}` tokenized with the tokenizer's special tokens. LlavaProcessor then repeats each `<image>` as many
times as the model has visual tokens, as vlalign does.

Users of the export (transformers' processor, vLLM's chat API, lmms-eval's llava_hf) pass the content either as
that string or as a list of parts ([{"type": "image"}, {"type": "text", ...}]). The exported template therefore
starts with a prelude that turns a list of parts into vlalign's string (one image token and a newline per image,
then the text) and adds the training system prompt when the messages have none, then runs the training template.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaImageProcessorPil, LlavaProcessor
from transformers.image_utils import PILImageResampling

from vlalign.data.build import image_transform_for, read_chat_template
from vlalign.data.templates import prompt_ids
from vlalign.errors import ConfigError

SAMPLE_PROMPT = "What is in the image? Answer in one word."
PIXEL_TOLERANCE = 1e-5  # float32 rounding of rescale/normalise; one grey level is ~0.015 after normalising

CHAT_PRELUDE = """{#- vlalign export: content given as a list of parts becomes the string vlalign trained on (one
image token and a newline per image, then the text parts joined by newlines); the training system prompt is added
when the conversation has none. Then the chat template of training follows. -#}
{%- set vlalign = namespace(messages=[]) -%}
{%- if @SYSTEM@ is not none and (messages | length == 0 or messages[0]['role'] != 'system') -%}
{%- set vlalign.messages = [{'role': 'system', 'content': @SYSTEM@}] -%}
{%- endif -%}
{%- for message in messages -%}
{%- if message['content'] is string or message['content'] is none -%}
{%- set vlalign.messages = vlalign.messages + [message] -%}
{%- else -%}
{%- set parts = namespace(images='', texts=[]) -%}
{%- for part in message['content'] -%}
{%- if part['type'] in ('image', 'image_url') -%}
{%- set parts.images = parts.images + @IMAGE@ + '\\n' -%}
{%- elif part['type'] == 'text' -%}
{%- set parts.texts = parts.texts + [part['text']] -%}
{%- endif -%}
{%- endfor -%}
{%- set vlalign.messages = vlalign.messages
      + [{'role': message['role'], 'content': parts.images + (parts.texts | join('\\n'))}] -%}
{%- endif -%}
{%- endfor -%}
{%- set messages = vlalign.messages -%}
"""

PLAIN_TEMPLATE = """{#- vlalign export of a stage-1 (plain format) checkpoint: trained on the image tokens followed
directly by a caption, with no roles and no system prompt, so a prompt is the image token(s) and then the text.
A string content "<image>\\n..." (lmms-eval's llava_hf writes that) loses the newline, as in training. -#}
{%- for message in messages if message['role'] != 'system' -%}
{%- if message['content'] is string -%}
{{- message['content'] | replace(@IMAGE@ + '\\n', @IMAGE@) -}}
{%- elif message['content'] is not none -%}
{%- for part in message['content'] if part['type'] in ('image', 'image_url') -%}{{- @IMAGE@ -}}{%- endfor -%}
{%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}
{%- endif -%}
{%- if message['role'] == 'assistant' -%}{{- eos_token -}}{%- endif -%}
{%- endfor -%}
"""


def _jinja_literal(value: str | None) -> str:
    """A Jinja string literal (Jinja unescapes backslashes and quotes as Python does) or `none`."""
    if value is None:
        return "none"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exported_chat_template(model, config) -> str:
    """The chat template the export ships: it renders what vlalign's `prompt_ids` renders for the same question."""
    image = _jinja_literal(config.model.image_token)
    if config.data.format == "plain":
        return PLAIN_TEMPLATE.replace("@IMAGE@", image)
    template = read_chat_template(config.data.chat_template) or model.tokenizer.get_chat_template()
    system = _jinja_literal(config.data.system_prompt)
    # one pass, so a system prompt that happens to contain "@IMAGE@" stays as written
    prelude = re.sub("@(SYSTEM|IMAGE)@", lambda match: system if match.group(1) == "SYSTEM" else image, CHAT_PRELUDE)
    return prelude + template


def build_processor(model, config, strategy: str, num_additional: int) -> LlavaProcessor:
    """LlavaProcessor: the tower's size and mean/std, vlalign's pad or stretch (no crop), bicubic as vlalign's PIL
    resize, the chat template above, and the numbers that give one `<image>` per visual token."""
    tower = model.vision_tower
    side = {"height": tower.image_size, "width": tower.image_size}
    image_processor = LlavaImageProcessorPil(
        do_resize=True, size=side, crop_size=side, do_center_crop=False, resample=PILImageResampling.BICUBIC,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(tower.image_mean),
        image_std=list(tower.image_std), do_pad=config.model.image_aspect == "pad", do_convert_rgb=True)
    template = exported_chat_template(model, config)
    tokenizer = copy.deepcopy(model.tokenizer)  # vlalign's own keeps its template: the checks below compare to it
    tokenizer.chat_template = template  # lmms-eval's llava_hf renders with the tokenizer's template
    patch = tower.model.config.patch_size
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                          patch_size=patch if isinstance(patch, int) else patch[0],
                          vision_feature_select_strategy=strategy, chat_template=template,
                          image_token=config.model.image_token, num_additional_image_tokens=num_additional)


def _first_difference(got: list[int], expected: list[int], tokenizer) -> str:
    index = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
    around = slice(max(0, index - 3), index + 3)
    return (f"first difference at token {index}: export {tokenizer.convert_ids_to_tokens(got[around])} vs vlalign "
            f"{tokenizer.convert_ids_to_tokens(expected[around])} (lengths {len(got)} and {len(expected)})")


def check_prompt_ids(processor, model, config) -> None:
    """The exported processor must give vlalign's prompt ids for content given as a list of parts (rendered by the
    processor, as transformers users do) and as a string (rendered by the tokenizer, as lmms-eval's llava_hf does).
    Tokenized as transformers' `processor.apply_chat_template(tokenize=True)` does: no second BOS when the rendered
    text starts with one."""
    if processor.tokenizer.chat_template != processor.chat_template:
        raise ConfigError("llava export: the tokenizer and the processor load different chat templates")
    expected = prompt_ids(model.tokenizer, config.data.format, SAMPLE_PROMPT, model.image_token_id,
                          model.num_visual_tokens, config.data.system_prompt,
                          read_chat_template(config.data.chat_template))
    image = Image.new("RGB", (model.vision_tower.image_size,) * 2, (127, 127, 127))
    renders = {"a list of parts": (processor, [{"type": "image"}, {"type": "text", "text": SAMPLE_PROMPT}]),
               "a string": (processor.tokenizer, f"{config.model.image_token}\n{SAMPLE_PROMPT}")}
    for form, (renderer, content) in renders.items():
        text = renderer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                            tokenize=False)
        bos = processor.tokenizer.bos_token
        add_special = not (bos and text.startswith(bos))
        got = list(processor(images=[image], text=text, add_special_tokens=add_special)["input_ids"][0])
        if got != expected:
            where = _first_difference(got, expected, model.tokenizer)
            raise ConfigError(f"llava export: the exported chat template and processor do not reproduce vlalign's "
                              f"prompt for content given as {form}; {where}")


def _sample_image(width: int, height: int) -> Image.Image:
    """A smooth colour pattern, so resizing differences show and the test is deterministic."""
    y, x = np.mgrid[0:height, 0:width]
    red, green, blue = (x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)), ((x + y) * 7 % 256)
    return Image.fromarray(np.stack([red, green, blue], axis=-1).astype(np.uint8))


def check_pixels(processor, model, config) -> list[str]:
    """The exported image processor against vlalign's ImageTransform: a square image must give the same pixels
    (resize, rescale, normalise); a wide one too, except for the colour of the pad border (returned as a note)."""
    transform, side = image_transform_for(model), model.vision_tower.image_size
    notes = []
    for name, image in (("square", _sample_image(2 * side, 2 * side)), ("wide", _sample_image(3 * side, 2 * side))):
        ours = transform(image)
        theirs = torch.as_tensor(np.asarray(processor.image_processor(images=image)["pixel_values"][0]))
        difference = float((ours - theirs).abs().max())
        if difference <= PIXEL_TOLERANCE:
            continue
        # Bicubic reaches ~2 output pixels past the pad bands (a sixth of the side each for a 3:2 image)
        inner = slice(side // 6 + 3, side - side // 6 - 3)
        inner_difference = (ours[:, inner] - theirs[:, inner]).abs()
        inner_same = inner_difference.numel() > 0 and float(inner_difference.max()) <= PIXEL_TOLERANCE
        if name == "wide" and config.model.image_aspect == "pad" and inner_same:
            notes.append(f"non-square images: the pad border differs by up to {difference:.3f} after normalising: "
                         f"transformers' LlavaImageProcessor (like LLaVA-1.5's expand2square) fills with "
                         f"int(mean * 255), vlalign's ImageTransform with round(mean * 255); the image itself is "
                         f"the same")
            continue
        raise ConfigError(f"llava export: the exported image processor gives other pixels than vlalign for a "
                          f"{name} image (max difference {difference:.3g}, model.image_aspect "
                          f"{config.model.image_aspect!r})")
    return notes


def save_processor(processor: LlavaProcessor, folder: Path) -> None:
    """processor_config.json (LlavaProcessor's own numbers) and preprocessor_config.json (the image processor): the
    files of llava-hf's hub repositories, which transformers 5 reads and 4.x (which vLLM may run on) needs.
    transformers 5 alone would nest the image processor inside processor_config.json."""
    processor.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    config_file = Path(folder) / "processor_config.json"
    processor_config = json.loads(config_file.read_text())
    processor_config.pop("image_processor", None)
    config_file.write_text(json.dumps(processor_config, indent=2, sort_keys=True) + "\n")


def check_export(folder, model, config) -> list[str]:
    """Load the written processor back, as a user would, and compare it with vlalign. Returns notes."""
    processor = AutoProcessor.from_pretrained(str(folder))
    if not isinstance(processor, LlavaProcessor):
        raise ConfigError(f"llava export: AutoProcessor loads a {type(processor).__name__}, not a LlavaProcessor")
    check_prompt_ids(processor, model, config)
    return check_pixels(processor, model, config)
