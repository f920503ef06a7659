"""Vision towers: any HF vision model (CLIP, SigLIP, AutoModel) or timm model, as a stream of patch tokens.

Every tower exposes the same facts the rest of the package needs: `hidden_size`, the patch `grid`
(rows, cols) of the tokens it returns, how many non-grid (CLS/register) tokens it keeps, and the
image size and normalisation its weights expect.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from vlalign.errors import ModelSourceError
from vlalign.models.checkpoint_io import load_tensor_file
from vlalign.models.efficientnet_lite import DEFAULT_IMAGE_SIZE, TFLITE_MEAN, TFLITE_STD, load_efficientnet_lite0
from vlalign.models.sources import Source, load_or_explain, parse_source

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class VisionTower(nn.Module):
    hidden_size: int
    grid: tuple[int, int]
    num_prefix_tokens: int  # kept CLS/register tokens in front of the grid
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    source: str

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.grid[0] * self.grid[1]


class HFVisionTower(VisionTower):
    def __init__(self, model: nn.Module, source: str, feature_layer: int, select: str,
                 image_size: int, patch_size: int, mean, std):
        super().__init__()
        self.model = model
        self.source = source
        self.feature_layer = feature_layer
        self.select = select
        self.image_size = image_size
        side = image_size // patch_size
        self.grid = (side, side)
        self.hidden_size = model.config.hidden_size
        self.image_mean, self.image_std = tuple(mean), tuple(std)
        with torch.no_grad():  # prefix count differs per family (CLIP 1, SigLIP 0, DINOv2 1 + registers)
            probe = self._hidden(torch.zeros(1, 3, image_size, image_size))
        self._prefix_in_model = probe.shape[1] - side * side
        self.num_prefix_tokens = self._prefix_in_model if select == "full" else 0

    def _hidden(self, pixel_values: torch.Tensor) -> torch.Tensor:
        outputs = self.model(pixel_values=pixel_values, output_hidden_states=True)
        return outputs.hidden_states[self.feature_layer]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        hidden = self._hidden(pixel_values.to(dtype))
        if self.select == "patch":
            hidden = hidden[:, self._prefix_in_model:]
        return hidden


class FeatureMapTower(VisionTower):
    """timm-style CNN/ViT: `forward_features` gives [B, C, H, W] (flattened to tokens) or [B, N, C].

    `stage` reads an intermediate stage instead of the final features (the CNN analogue of LLaVA's
    `vision_feature_layer`): vlalign's EfficientNet-Lite0 via `forward_stage`, timm models via
    `forward_intermediates`."""

    def __init__(self, model: nn.Module, source: str, image_size: int, mean, std, select: str,
                 stage: int | None = None):
        super().__init__()
        self.model = model
        self.source = source
        self.image_size = image_size
        self.image_mean, self.image_std = tuple(mean), tuple(std)
        self.select = select
        self.stage = stage
        if stage is not None and not hasattr(model, "forward_stage") and not hasattr(model, "forward_intermediates"):
            raise ModelSourceError(f"vision tower {source!r} cannot return intermediate stages "
                                   f"(model.vision_feature_stage={stage})")
        with torch.no_grad():
            features = self._features(torch.zeros(1, 3, image_size, image_size))
        self.hidden_size = features.shape[1] if features.dim() == 4 else features.shape[-1]
        if features.dim() == 4:
            self.grid = (features.shape[2], features.shape[3])
            self._prefix_in_model = 0
        else:
            self._prefix_in_model = int(getattr(model, "num_prefix_tokens", 0))
            side = int(round((features.shape[1] - self._prefix_in_model) ** 0.5))
            self.grid = (side, side)
        self.num_prefix_tokens = self._prefix_in_model if select == "full" else 0

    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.stage is None:
            return self.model.forward_features(pixel_values)
        if hasattr(self.model, "forward_stage"):
            return self.model.forward_stage(pixel_values, self.stage)
        return self.model.forward_intermediates(pixel_values, indices=[self.stage], intermediates_only=True)[0]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        features = self._features(pixel_values.to(dtype))
        if features.dim() == 4:
            return features.flatten(2).transpose(1, 2)
        return features[:, self._prefix_in_model:] if self.select == "patch" else features


def _hf_vision_model(source_text: str):
    # transformers imported on use: `vlalign train` / `info` check a config before any model loads
    from transformers import AutoConfig, AutoModel, CLIPVisionModel, SiglipVisionModel

    config = load_or_explain(source_text, "vision tower", lambda: AutoConfig.from_pretrained(source_text))
    vision = getattr(config, "vision_config", config)
    if not (hasattr(vision, "image_size") and hasattr(vision, "patch_size")):
        raise ModelSourceError(f"model.vision_tower {source_text!r} is a {config.model_type!r} model with no image "
                               f"input (its config has no image_size / patch_size); it takes a ViT-style vision "
                               f"model (CLIP, SigLIP, ...), `timm:<name>` or efficientnet-lite0. Was it meant for "
                               f"model.llm?")
    # Full dual-encoder checkpoints (CLIPModel/SiglipModel) load just their vision half.
    family = {"clip": CLIPVisionModel, "clip_vision_model": CLIPVisionModel,
              "siglip": SiglipVisionModel, "siglip_vision_model": SiglipVisionModel}
    model_class = family.get(config.model_type, AutoModel)
    model = load_or_explain(source_text, "vision tower", lambda: model_class.from_pretrained(source_text))
    vision_config = getattr(model.config, "vision_config", model.config)
    return model, vision_config


def _processor_stats(source_text: str, default_mean, default_std):
    from transformers import AutoImageProcessor  # on use, as above: its image stack takes ~1.5 s to import

    try:
        processor = AutoImageProcessor.from_pretrained(source_text)
        return tuple(processor.image_mean), tuple(processor.image_std)
    except (OSError, ValueError, AttributeError, TypeError):
        return default_mean, default_std  # folders without a preprocessor config (tiny test models)


def load_vision_tower(source_text: str, feature_layer: int = -2, select: str = "patch",
                      image_size: int | None = None, feature_stage: int | None = None) -> VisionTower:
    source = parse_source(source_text)
    if source.kind == "packaged-vision":
        return FeatureMapTower(load_efficientnet_lite0(), source_text, image_size or DEFAULT_IMAGE_SIZE,
                               TFLITE_MEAN, TFLITE_STD, select, feature_stage)
    if source.kind == "timm":
        return _timm_tower(source, source_text, image_size, select, feature_stage)
    if feature_stage is not None:
        raise ModelSourceError(f"model.vision_feature_stage is for CNN/timm towers; {source_text!r} is an HF "
                               f"model: use model.vision_feature_layer")
    if source.kind != "hf":
        raise ModelSourceError(f"vision tower {source_text!r}: a {source.kind} source is not a vision model")
    model, vision_config = _hf_vision_model(source_text)
    mean, std = _processor_stats(source_text, CLIP_MEAN, CLIP_STD)
    size = image_size or vision_config.image_size
    size = size if isinstance(size, int) else size[0]
    patch = vision_config.patch_size
    patch = patch if isinstance(patch, int) else patch[0]
    return HFVisionTower(model, source_text, feature_layer, select, size, patch, mean, std)


def _timm_tower(source: Source, source_text: str, image_size: int | None, select: str,
                feature_stage: int | None) -> VisionTower:
    if importlib.util.find_spec("timm") is None:
        raise ModelSourceError(f"vision tower {source_text!r} needs timm (pip install 'vlalign[timm]'); "
                               f"the packaged 'efficientnet-lite0' works without it")
    try:
        import timm
    except ImportError as exc:  # e.g. no torchvision that works with this torch build
        raise ModelSourceError(f"vision tower {source_text!r}: timm is installed but does not import "
                               f"({exc}); timm needs a torchvision that matches your torch") from exc
    try:
        model = timm.create_model(source.location, pretrained=False, num_classes=0)
    except RuntimeError as exc:
        raise ModelSourceError(f"vision tower {source_text!r}: timm has no model {source.location!r}") from exc
    if source.weights:
        state = load_tensor_file(source.weights)
        missing, unexpected = model.load_state_dict(state, strict=False)
        unexpected = [k for k in unexpected if not k.startswith(("classifier.", "head.", "fc."))]
        if missing or unexpected:
            raise ModelSourceError(f"vision tower {source_text!r}: weights do not fit; missing {missing[:5]}, "
                                   f"unexpected {unexpected[:5]}")
    data_config = timm.data.resolve_data_config({}, model=model)
    size = image_size or data_config["input_size"][-1]
    return FeatureMapTower(model.eval(), source_text, size, data_config["mean"], data_config["std"], select,
                           feature_stage)
