"""Config -> dataset and image transform, shared by training, generation and evaluation."""

from __future__ import annotations

from pathlib import Path

from vlalign.config import RunConfig
from vlalign.data.dataset import LlavaDataset
from vlalign.data.images import ImageTransform
from vlalign.data.llava_json import SkipReport, load_records
from vlalign.errors import ConfigError


def image_transform_for(model) -> ImageTransform:
    tower = model.vision_tower
    return ImageTransform(tower.image_size, tower.image_mean, tower.image_std, model.config.image_aspect)


def read_chat_template(value: str | None) -> str | None:
    """`data.chat_template` may be Jinja text or a path to a file holding it."""
    if value is not None and "{" not in value:
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"data.chat_template: {value!r} is neither Jinja text nor an existing file")
        return path.read_text()
    return value


def build_dataset(config: RunConfig, model, skips: SkipReport, fields: dict[str, dict] | None = None) -> LlavaDataset:
    """`fields`: the per-sample fields the configured objectives need ({name: options}, vlalign.data.samples)."""
    if not config.data.train_file:
        raise ConfigError("data.train_file is not set (a LLaVA JSON/JSONL file)")
    records = load_records(config.data.train_file, config.data.image_root, config.data.on_error, skips,
                           config.model.image_token)
    return LlavaDataset(records, model.tokenizer, image_transform_for(model), fmt=config.data.format,
                        image_token_id=model.image_token_id, num_visual_tokens=model.num_visual_tokens,
                        max_length=config.model.max_length, on_error=config.data.on_error,
                        system_prompt=config.data.system_prompt,
                        chat_template=read_chat_template(config.data.chat_template),
                        fields=fields)
