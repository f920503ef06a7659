"""Decoding image files and bytes with PIL alone (no torch), so that readers of benchmark files stay light.

Every PIL mode a dataset can hold comes out as 8-bit "RGB", or "RGBA" where the image has transparency (the
model's ImageTransform composites it on its fill colour): 16-bit and 32-bit greyscale rescaled to 0-255 (PIL's
own convert clips them at 255, so a 16-bit PNG became white), float images read as 0-1 (or 0-255 when larger),
palette / LA / tRNS transparency kept as alpha, CMYK / YCbCr / LAB / HSV converted, EXIF orientation applied.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


@contextlib.contextmanager
def _truncation_is_an_error():
    """PIL's `ImageFile.LOAD_TRUNCATED_IMAGES` is process-wide, and libraries set it (lmms-eval's task module
    does at import): a truncated file would then decode silently with its missing rows grey. vlalign's
    loaders refuse truncated files whatever the flag says."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
EXIF_ORIENTATION = 0x0112  # the EXIF tag; 1 = upright


def _greyscale_to_8bit(image: Image.Image) -> Image.Image:
    """I;16* and I (16-bit PNG / TIFF greyscale: 0-65535) -> 0-255; F (float) -> 0-1 scaled, or 0-255 when larger."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    if image.mode == "F":
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0
    return Image.fromarray(np.clip(np.round(values * scale), 0, 255).astype(np.uint8), "L")


def rgb_or_rgba(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB, or RGBA when it carries transparency; upright by its EXIF orientation. An
    upright RGB / RGBA image comes back as the same object (exif_transpose would copy it, and the model's
    ImageTransform calls this on every image it gets)."""
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in ("RGB", "RGBA"):
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return _greyscale_to_8bit(image).convert("RGB")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        return image.convert("RGBA")
    return image.convert("RGB")


def _decode(source) -> Image.Image:
    with _truncation_is_an_error(), Image.open(source) as image:
        image.load()
        decoded = rgb_or_rgba(image)
        return image.copy() if decoded is image else decoded  # leaving `with` closes `image` itself


def load_image(path: str | Path) -> Image.Image:
    """Fully decode now, so a truncated or corrupt file fails here and not deep inside a batch."""
    try:
        return _decode(path)
    except DECODE_ERRORS as exc:
        raise OSError(f"cannot read image {path}: {exc}") from exc


def decode_image_bytes(data: bytes) -> Image.Image:
    """An encoded image held in memory (a `datasets` Image cell, MMBench's base64), fully decoded now."""
    try:
        return _decode(io.BytesIO(data))
    except DECODE_ERRORS as exc:
        raise OSError(f"cannot decode embedded image: {exc}") from exc
