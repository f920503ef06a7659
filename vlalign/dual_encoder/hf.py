"""`DualEncoder` over a Hugging Face CLIPModel or SiglipModel (real checkpoints, e.g. for SEA patch labels).

Patch embeddings use each family's own final image head on every patch token, so they live in the space
the text embeddings are compared in:
  * CLIP: the pooled embedding is visual_projection(post_layernorm(CLS)); patches get the same two layers.
    (The vision model's last_hidden_state is taken before post_layernorm, which is why it is applied here.)
  * SigLIP: no CLS; last_hidden_state is already post-layernormed and the image embedding is an attention
    pooling head (one learnt probe query, then LayerNorm + MLP with a residual). Each patch goes through
    that head as a one-token image: attention over a single key returns its value projection, so a patch
    embedding is exactly what the model would output for an image made of that patch's features alone.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel, SiglipModel

from vlalign.data.images import ImageTransform
from vlalign.dual_encoder.base import DualEncoder
from vlalign.errors import ModelSourceError
from vlalign.models.sources import load_or_explain
from vlalign.models.vision import CLIP_MEAN, CLIP_STD

FAMILIES = ("clip", "siglip")
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
SIGLIP_TEXT_LENGTH = 64  # SigLIP was trained on text padded to 64 tokens and pools the last position


def _pooled(output) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or a BaseModelOutputWithPooling (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def default_image_transform(model: nn.Module, mean=None, std=None) -> ImageTransform:
    """CLIP's processor resizes the short side and centre-crops; SigLIP's resizes to the square."""
    family = model.config.model_type
    size = model.config.vision_config.image_size
    if family == "clip":
        return ImageTransform(size, mean or CLIP_MEAN, std or CLIP_STD, aspect="crop")
    return ImageTransform(size, mean or SIGLIP_MEAN, std or SIGLIP_STD, aspect="resize")


class HFDualEncoder(nn.Module, DualEncoder):
    def __init__(self, model: nn.Module, tokenizer, image_transform: ImageTransform | None = None):
        super().__init__()
        family = getattr(model.config, "model_type", None)
        if family not in FAMILIES:
            raise ModelSourceError(f"HFDualEncoder needs a CLIPModel or SiglipModel, got model_type {family!r}")
        self.family = family
        self.model = model
        self.tokenizer = tokenizer
        self.image_transform = image_transform or default_image_transform(model)
        vision_config = model.config.vision_config
        side = vision_config.image_size // vision_config.patch_size
        self._grid = (side, side)
        if family == "clip":
            self.embed_dim = model.config.projection_dim
        else:
            if not getattr(self._vision_transformer(), "use_head", True):
                raise ModelSourceError("this SigLIP checkpoint has no pooling head (vision_use_head=False), so it "
                                       "has no image embedding to compare with text")
            self.embed_dim = vision_config.hidden_size
        text_positions = model.config.text_config.max_position_embeddings
        self.text_max_length = SIGLIP_TEXT_LENGTH if family == "siglip" else text_positions

    @classmethod
    def from_pretrained(cls, source: str) -> "HFDualEncoder":
        """A hub id or local folder of a full CLIP / SigLIP checkpoint (with its tokenizer)."""
        config = load_or_explain(source, "dual encoder", lambda: AutoConfig.from_pretrained(source))
        model_class = {"clip": CLIPModel, "siglip": SiglipModel}.get(config.model_type)
        if model_class is None:
            raise ModelSourceError(f"dual encoder {source!r}: model_type {config.model_type!r} is not one of "
                                   f"{FAMILIES} (a full image+text checkpoint is needed, not a vision tower)")
        model = load_or_explain(source, "dual encoder", lambda: model_class.from_pretrained(source)).eval()
        tokenizer = load_or_explain(source, "dual encoder tokenizer", lambda: AutoTokenizer.from_pretrained(source))
        try:
            processor = AutoImageProcessor.from_pretrained(source)
            transform = default_image_transform(model, tuple(processor.image_mean), tuple(processor.image_std))
        except (OSError, ValueError, AttributeError, TypeError):
            transform = None  # no preprocessor config: the family's published defaults
        return cls(model, tokenizer, transform)

    def _vision_transformer(self) -> nn.Module:
        # transformers 5 nests CLIPVisionModel/SiglipVisionModel(.vision_model = the transformer); 4 did not
        vision = self.model.vision_model
        return getattr(vision, "vision_model", vision)

    def _pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        parameter = next(self.model.parameters())
        return pixel_values.to(device=parameter.device, dtype=parameter.dtype)

    @property
    def patch_grid(self) -> tuple[int, int]:
        return self._grid

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().reshape(()).exp()

    @property
    def logit_bias(self) -> torch.Tensor | None:
        """SigLIP's learnt bias (logits = scale * cos + bias); None for CLIP."""
        bias = getattr(self.model, "logit_bias", None)
        return bias.detach().reshape(()) if bias is not None else None

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=self._pixels(pixel_values)))

    def encode_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model.vision_model(pixel_values=self._pixels(pixel_values)).last_hidden_state
        transformer = self._vision_transformer()
        if self.family == "clip":
            patches = transformer.post_layernorm(hidden[:, 1:])  # drop CLS, same layers as the pooled path
            return self.model.visual_projection(patches)
        batch, count, width = hidden.shape  # SigLIP: no CLS, already post-layernormed
        return transformer.head(hidden.reshape(batch * count, 1, width)).reshape(batch, count, -1)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        if isinstance(texts, str) or not texts:
            raise ValueError(f"texts must be a non-empty list of strings, got {texts!r}")
        padding = "max_length" if self.family == "siglip" else True
        tokens = self.tokenizer(list(texts), padding=padding, truncation=True, max_length=self.text_max_length,
                                return_tensors="pt")
        device = next(self.model.parameters()).device
        inputs = {"input_ids": tokens["input_ids"].to(device)}
        if self.family == "clip" and "attention_mask" in tokens:  # SigLIP was trained without a text mask
            inputs["attention_mask"] = tokens["attention_mask"].to(device)
        return _pooled(self.model.get_text_features(**inputs))
