"""Sample layouts and per-sample fields: the data side of the objective plug-in contract.

- A *layout* turns a record into token ids and labels (`plain`: LLaVA stage 1; `chat`: the LLM's chat
  template; `plain_image_eos`: stage 1 with the image's own EOS input in front of the caption, for
  Ak et al.'s contrastive term). Each serves one `data.format`.
- A *field* is something an objective needs per sample beyond ids, labels and pixels (the caption text,
  the dataset index, the image key, the image-EOS position, ...). Objectives declare the fields they need
  (`Objective.sample_fields`); the dataset extracts exactly those and the collator gathers them into
  `Batch.extras`, as a tensor or a list. A field may require a layout (the image-EOS position exists only
  in `plain_image_eos`). A field nobody registered is an error, never ignored.

A new objective that needs a new per-sample value registers a field here (from its own module) and
touches nothing else.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Literal

from vlalign.data.eos_layout import IMAGE_NOUNS
from vlalign.data.llava_json import Record
from vlalign.data.templates import Tokenized, tokenize_plain_with_image_eos, tokenize_record
from vlalign.errors import ConfigError
from vlalign.registry import add_unique


@dataclass(frozen=True)
class LayoutContext:
    """What every layout needs besides the record."""

    tokenizer: Any
    image_token_id: int
    num_visual_tokens: int
    max_length: int
    system_prompt: str | None = None
    chat_template: str | None = None


@dataclass(frozen=True)
class SampleLayout:
    name: str
    data_format: Literal["plain", "chat"]  # the data.format whose records it lays out
    tokenize: Callable[[Record, LayoutContext, dict], Tokenized]


@dataclass(frozen=True)
class FieldContext:
    record: Record
    tokens: Tokenized
    index: int  # the record's position in the dataset
    layout: SampleLayout


@dataclass(frozen=True)
class SampleField:
    name: str
    extract: Callable[[FieldContext], Any]
    collate: Literal["tensor", "list"]  # "tensor": numbers stacked into a [B] tensor; "list": one value per sample
    layout: str | None = None  # the layout that must lay the sample out for this field to exist


SAMPLE_LAYOUTS: dict[str, SampleLayout] = {}
SAMPLE_FIELDS: dict[str, SampleField] = {}


def register_layout(name: str, data_format: Literal["plain", "chat"]):
    def wrap(tokenize):
        add_unique(SAMPLE_LAYOUTS, "sample layout", name, SampleLayout(name, data_format, tokenize))
        return tokenize
    return wrap


def register_sample_field(name: str, collate: Literal["tensor", "list"] = "list", layout: str | None = None):
    """Decorator for `extract(FieldContext) -> value`, making `name` a field objectives may ask for."""
    def wrap(extract):
        if collate not in ("tensor", "list"):
            raise ValueError(f"sample field {name!r}: collate must be 'tensor' or 'list', got {collate!r}")
        add_unique(SAMPLE_FIELDS, "sample field", name, SampleField(name, extract, collate, layout))
        return extract
    return wrap


def resolve_layout(data_format: str, fields: dict[str, dict]) -> tuple[SampleLayout, dict]:
    """The layout for `data.format` and the requested fields ({name: options}), and that layout's options
    (the options of the fields that require it)."""
    unknown = [name for name in fields if name not in SAMPLE_FIELDS]
    if unknown:
        raise ConfigError(f"no sample layout provides the field(s) {unknown}; registered fields: "
                          f"{', '.join(sorted(SAMPLE_FIELDS))}")
    wanted = {SAMPLE_FIELDS[name].layout for name in fields} - {None}
    if len(wanted) > 1:
        raise ConfigError(f"the requested sample fields need different layouts: {sorted(wanted)}")
    name = wanted.pop() if wanted else data_format
    if name not in SAMPLE_LAYOUTS:
        raise ConfigError(f"no sample layout {name!r}; registered: {', '.join(sorted(SAMPLE_LAYOUTS))}")
    layout = SAMPLE_LAYOUTS[name]
    if layout.data_format != data_format:
        needing = [field for field in fields if SAMPLE_FIELDS[field].layout == name]
        raise ConfigError(f"sample field(s) {needing} exist only in the {name!r} layout, which needs "
                          f"data.format: {layout.data_format}, not {data_format!r}")
    options: dict = {}
    for field_name, field_options in fields.items():
        if SAMPLE_FIELDS[field_name].layout == name:
            options.update(field_options)
    return layout, options


# --- built-in layouts ---------------------------------------------------------------------------------------

@register_layout("plain", "plain")
def _plain(record: Record, ctx: LayoutContext, options: dict) -> Tokenized:
    return tokenize_record(record, ctx.tokenizer, "plain", ctx.image_token_id, ctx.num_visual_tokens,
                           ctx.max_length)


@register_layout("chat", "chat")
def _chat(record: Record, ctx: LayoutContext, options: dict) -> Tokenized:
    return tokenize_record(record, ctx.tokenizer, "chat", ctx.image_token_id, ctx.num_visual_tokens,
                           ctx.max_length, ctx.system_prompt, ctx.chat_template)


@register_layout("plain_image_eos", "plain")
def _plain_image_eos(record: Record, ctx: LayoutContext, options: dict) -> Tokenized:
    # Ak et al. draw photo|image|picture per sample; drawn from the record id, so a resumed run and every
    # rank see the same prompt for the same record.
    noun = random.Random(record.id).choice(IMAGE_NOUNS)
    return tokenize_plain_with_image_eos(record, ctx.tokenizer, ctx.image_token_id, ctx.num_visual_tokens,
                                         ctx.max_length, options.get("prompt", False), noun)


# --- built-in fields ----------------------------------------------------------------------------------------

@register_sample_field("index")
def _index(ctx: FieldContext) -> int:
    """Dataset position: keys per-record caches (pre-extracted caption embeddings) and seeded draws."""
    return ctx.index


@register_sample_field("image_key")
def _image_key(ctx: FieldContext) -> str | None:
    """The record's `image` string (None for text-only records): the key of per-image caches (SEA labels)."""
    return ctx.record.image_key


@register_sample_field("caption")
def _caption(ctx: FieldContext) -> str:
    """The supervised text of a stage-1 record (what a Q-Former's text branch reads); "" in chat layouts."""
    return ctx.record.turns[-1].text.strip() if ctx.layout.data_format == "plain" else ""


@register_sample_field("image_eos_position", collate="tensor", layout="plain_image_eos")
def _image_eos_position(ctx: FieldContext) -> int:
    """Index of the image-side [EOS] in the sample (its final hidden state is the image embedding)."""
    return ctx.tokens.layout_fields["image_eos_position"]
