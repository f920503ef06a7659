"""Image loading and the tower's preprocessing (PIL + numpy; no torchvision)."""

from __future__ import annotations


import numpy as np
import torch
from PIL import Image

from vlalign.data.image_files import load_image, rgb_or_rgba

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageTransform", "load_image"]

# ImageNet statistics (timm's IMAGENET_DEFAULT_MEAN/STD, MAE's and ViT's image processors).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageTransform:
    """PIL image -> normalised [3, S, S] float tensor.

    aspect: "pad" (LLaVA-1.5: pad to a square with the mean colour, keeps the whole image),
    "crop" (CLIP: resize the short side, centre crop), "resize" (stretch).
    """

    def __init__(self, size: int, mean, std, aspect: str = "pad"):
        self.size = size
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.aspect = aspect

    @property
    def fill(self) -> tuple[int, int, int]:
        # LLaVA-1.5's expand2square (and transformers' LlavaImageProcessor) truncate: int(mean * 255)
        return tuple(int(c * 255) for c in self.mean)

    def _opaque(self, image: Image.Image) -> Image.Image:
        """Any mode as RGB; transparent parts shown on the fill colour that padding uses (not black, which is
        what dropping the alpha channel shows: the colour a transparent pixel happens to store)."""
        image = rgb_or_rgba(image)
        if image.mode == "RGB":
            return image
        canvas = Image.new("RGB", image.size, self.fill)
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas

    def _square(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        if self.aspect == "pad" and width != height:
            side = max(width, height)
            canvas = Image.new("RGB", (side, side), self.fill)
            canvas.paste(image, ((side - width) // 2, (side - height) // 2))
            return canvas
        if self.aspect == "crop" and width != height:
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            return image.crop((left, top, left + side, top + side))
        return image

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = self._square(self._opaque(image))
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = (array - self.mean) / self.std
        return torch.from_numpy(array.transpose(2, 0, 1).copy())
