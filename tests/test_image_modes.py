"""Every PIL mode a dataset can contain decodes to the picture it holds: compared by pixel statistics with the
source values (PIL's own convert("RGB") clips 16-bit greyscale at 255, i.e. a white image, and shows transparent
pixels in whatever colour they store)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from vlalign.data.image_files import load_image
from vlalign.data.images import ImageTransform

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.25, 0.25)
FILL = (127, 102, 76)  # int(mean * 255), the colour padding uses


def _ramp(high: float, dtype) -> np.ndarray:
    return np.linspace(0, high, 32 * 48).reshape(32, 48).astype(dtype)


def _pixels_back(tensor) -> np.ndarray:
    """ImageTransform's output, un-normalised to 0-255 RGB [H, W, 3]."""
    values = tensor.numpy().transpose(1, 2, 0) * np.array(STD) + np.array(MEAN)
    return values * 255.0


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_greyscale_is_rescaled_not_clipped_white(tmp_path, fmt):
    source = _ramp(65535, np.uint16)
    path = tmp_path / f"grey16.{fmt.lower()}"
    Image.fromarray(source).save(path, format=fmt)
    assert Image.open(path).mode == "I;16"
    loaded = np.asarray(load_image(path), dtype=np.float64)
    assert loaded.shape == (32, 48, 3)
    expected = source / 257.0
    assert np.abs(loaded[..., 0] - expected).max() <= 0.5 and np.array_equal(loaded[..., 0], loaded[..., 2])
    assert loaded.mean() == pytest.approx(expected.mean(), abs=0.5)  # ~127.5, where PIL's convert gives ~255


def test_32_bit_integer_and_float_greyscale(tmp_path):
    Image.fromarray(_ramp(65535, np.int32), "I").save(tmp_path / "grey32.tiff")
    assert Image.open(tmp_path / "grey32.tiff").mode == "I"
    loaded = np.asarray(load_image(tmp_path / "grey32.tiff"), dtype=np.float64)[..., 0]
    assert np.abs(loaded - _ramp(65535, np.int32) / 257.0).max() <= 0.5
    Image.fromarray(_ramp(1.0, np.float32), "F").save(tmp_path / "float.tiff")
    loaded = np.asarray(load_image(tmp_path / "float.tiff"), dtype=np.float64)[..., 0]
    assert np.abs(loaded - _ramp(255.0, np.float64)).max() <= 0.5  # 0-1 floats span the 8-bit range


def _png_16bit_rgb(path, pixels: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one), chunk by chunk as the PNG spec lays it out."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def test_16_bit_rgb(tmp_path):
    pixels = np.stack([_ramp(65535, np.uint16), _ramp(65535, np.uint16)[::-1], np.full((32, 48), 30000)], -1)
    _png_16bit_rgb(tmp_path / "rgb16.png", pixels)
    loaded = np.asarray(load_image(tmp_path / "rgb16.png"), dtype=np.float64)
    assert np.abs(loaded - pixels / 257.0).max() <= 1.0


def test_transparency_is_shown_on_the_fill_colour(tmp_path):
    transform = ImageTransform(32, MEAN, STD, aspect="resize")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 255  # pure red where opaque...
    rgba[:, 16:, 3] = 255  # ...on the right half; the left half is transparent (and stores black)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    back = _pixels_back(transform(load_image(tmp_path / "rgba.png")))
    assert np.abs(back[:, :14] - FILL).max() < 1.0 and np.abs(back[:, 18:] - (255, 0, 0)).max() < 1.0

    grey_alpha = np.zeros((32, 32, 2), np.uint8)
    grey_alpha[..., 0], grey_alpha[:, 16:, 1] = 200, 255
    Image.fromarray(grey_alpha, "LA").save(tmp_path / "la.png")
    back = _pixels_back(transform(load_image(tmp_path / "la.png")))
    assert np.abs(back[:, :14] - FILL).max() < 1.0 and np.abs(back[:, 18:] - 200).max() < 1.0

    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black (transparent), 1 blue
    palette.paste(1, (16, 0, 32, 32))
    palette.save(tmp_path / "palette.png", transparency=0)
    back = _pixels_back(transform(load_image(tmp_path / "palette.png")))
    assert np.abs(back[:, :14] - FILL).max() < 1.0 and np.abs(back[:, 18:] - (0, 0, 255)).max() < 1.0


def test_cmyk_and_other_colour_spaces(tmp_path):
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    red = np.asarray(load_image(tmp_path / "cmyk.jpg"), dtype=np.float64).reshape(-1, 3).mean(0)
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
    Image.new("1", (8, 8), 1).save(tmp_path / "bits.png")
    assert np.asarray(load_image(tmp_path / "bits.png")).min() == 255
    Image.new("YCbCr", (8, 8), (76, 85, 255)).convert("YCbCr").save(tmp_path / "ycbcr.jpg", quality=95)
    assert np.asarray(load_image(tmp_path / "ycbcr.jpg"), dtype=np.float64)[..., 0].mean() > 230  # red


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 255, 255)  # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    upright = np.asarray(load_image(tmp_path / "rotated.jpg"), dtype=np.float64)
    assert upright.shape == (40, 20, 3)  # displayed portrait
    assert upright[:18].mean() > 240 and upright[22:].mean() < 15  # stored left half is now the top
