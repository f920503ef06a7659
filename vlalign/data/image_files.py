"""Decoding image files and bytes with PIL alone (no torch), so that readers of benchmark files stay light."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

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


def _decode(source) -> Image.Image:
    with _truncation_is_an_error(), Image.open(source) as image:
        image.load()
        return image.convert("RGB")


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
