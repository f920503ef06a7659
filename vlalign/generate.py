"""Load a stage checkpoint and answer a prompt about an image (greedy or sampling, with KV cache)."""

from __future__ import annotations

from pathlib import Path

import torch

from vlalign.config import load_config
from vlalign.data.build import image_transform_for, read_chat_template
from vlalign.data.images import load_image
from vlalign.data.templates import prompt_ids
from vlalign.errors import ConfigError
from vlalign.models.vlm import VisionLanguageModel
from vlalign.train import checkpoint as ckpt
from vlalign.train.stages import apply_tune


def resolve_checkpoint(folder: str | Path) -> Path:
    """Accept a stage output folder (uses its `final/`) or a checkpoint folder itself."""
    folder = Path(folder)
    for candidate in (folder, folder / "final"):
        if ckpt.is_complete(candidate):
            return candidate
    raise ConfigError(f"{folder} holds no complete vlalign checkpoint (expected model.safetensors and "
                      f"{ckpt.STATE_FILE}, or a final/ folder with them)")


def load_checkpoint_model(folder: str | Path, device: str | torch.device | None = None):
    """(model in eval mode, its run config) from a checkpoint folder; on `device`, by default the GPU
    when there is one."""
    folder = resolve_checkpoint(folder)
    config = load_config(folder / "config.yaml")
    model = VisionLanguageModel.from_config(config.model)
    apply_tune(model, config.train.stage, config.train.tune)  # recreates LoRA layers so their weights fit
    ckpt.load_weights(folder, model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval().requires_grad_(False), config


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
