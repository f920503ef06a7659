"""Decoding image files and bytes with PIL alone (no torch), so that readers of benchmark files stay light."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError


def load_image(path: str | Path) -> Image.Image:
    """Fully decode now, so a truncated or corrupt file fails here and not deep inside a batch."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise OSError(f"cannot read image {path}: {exc}") from exc


def decode_image_bytes(data: bytes) -> Image.Image:
    """An encoded image held in memory (a `datasets` Image cell, MMBench's base64), fully decoded now."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise OSError(f"cannot decode embedded image: {exc}") from exc
