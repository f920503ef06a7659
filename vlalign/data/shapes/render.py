"""Pixels for a `Scene`: an RGB image and the object-id map that says which object covers each pixel.

Shapes are drawn supersampled into a coverage mask (cheap: one small mask per shape and side, cached) and
blended over the background, so edges are antialiased and the id map comes from the very same mask
(a pixel belongs to an object when the object covers at least half of it).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from vlalign.data.shapes.world import Background, Scene

SUPERSAMPLE = 4
OWNERSHIP_FRACTION = 0.25  # an object owns a grid cell when it covers at least this share of its pixels


def _unit_polygon(shape: str) -> list[tuple[float, float]] | None:
    """Vertices in the unit box (0..1, y down); None for the shapes drawn without a polygon."""
    if shape == "triangle":
        return [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
    if shape == "diamond":  # narrower than tall, so it never reads as a rotated square
        return [(0.5, 0.0), (0.85, 0.5), (0.5, 1.0), (0.15, 0.5)]
    if shape == "star":
        # Five points; the outer radius makes it as wide as the box, and the centre is lowered so the
        # star's shorter lower half does not leave the bottom of the box empty.
        outer = 0.5 / math.sin(math.radians(72))
        inner = outer * 0.45
        centre_y = 0.5 + outer * (1 - math.cos(math.radians(36))) / 2
        points = []
        for k in range(10):
            radius = outer if k % 2 == 0 else inner
            angle = math.radians(-90 + 36 * k)
            points.append((0.5 + radius * math.cos(angle), centre_y + radius * math.sin(angle)))
        return points
    return None


@lru_cache(maxsize=2048)
def shape_coverage(shape: str, side: int) -> np.ndarray:
    """Share of each pixel of a side x side box that the shape covers, float32 in [0, 1] (read-only)."""
    big = side * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    extent = big - 1
    if shape == "circle":
        draw.ellipse((0, 0, extent, extent), fill=255)
    elif shape == "square":
        draw.rectangle((0, 0, extent, extent), fill=255)
    elif shape == "cross":
        low, high = round(extent * 0.33), round(extent * 0.67)
        draw.rectangle((low, 0, high, extent), fill=255)
        draw.rectangle((0, low, extent, high), fill=255)
    else:
        polygon = _unit_polygon(shape)
        if polygon is None:
            raise ValueError(f"unknown shape {shape!r}")
        draw.polygon([(x * extent, y * extent) for x, y in polygon], fill=255)
    coverage = np.asarray(mask, dtype=np.float32).reshape(side, SUPERSAMPLE, side, SUPERSAMPLE).mean(axis=(1, 3))
    coverage /= 255.0
    coverage.flags.writeable = False
    return coverage


def background_pixels(background: Background, size: int) -> np.ndarray:
    """float32 [size, size, 3] background, light and low in saturation for every kind."""
    color_a = np.array(background.color_a, dtype=np.float32)
    if background.kind == "plain":
        return np.broadcast_to(color_a, (size, size, 3)).copy()
    if background.kind == "gradient":
        ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
        if background.direction == "horizontal":
            t = np.broadcast_to(ramp[None, :], (size, size))
        elif background.direction == "vertical":
            t = np.broadcast_to(ramp[:, None], (size, size))
        else:
            t = (ramp[None, :] + ramp[:, None]) / 2
        color_b = np.array(background.color_b, dtype=np.float32)
        return color_a + t[..., None] * (color_b - color_a)
    if background.kind == "noise":
        # Grey (channel-equal) noise: texture without colour speckle that could read as an object colour.
        noise_rng = np.random.default_rng(background.noise_seed)
        coarse = noise_rng.normal(0.0, 9.0, size=(8, 8)).astype(np.float32)
        blotches = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BILINEAR))
        grain = noise_rng.normal(0.0, 5.0, size=(size, size)).astype(np.float32)
        return np.clip(color_a + (blotches + grain)[..., None], 170.0, 255.0)
    raise ValueError(f"unknown background kind {background.kind!r}")


def render(scene: Scene) -> tuple[Image.Image, np.ndarray]:
    """(RGB image, object-id map int16 [H, W], -1 for background)."""
    size = scene.image_size
    canvas = background_pixels(scene.background, size)
    id_map = np.full((size, size), -1, dtype=np.int16)
    for index, obj in enumerate(scene.objects):
        x0, y0, x1, y1 = obj.bbox
        coverage = shape_coverage(obj.shape, x1 - x0)
        weight = coverage[..., None]
        region = canvas[y0:y1, x0:x1]
        canvas[y0:y1, x0:x1] = region * (1.0 - weight) + np.array(obj.rgb, dtype=np.float32) * weight
        id_map[y0:y1, x0:x1][coverage >= 0.5] = index
    pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB"), id_map


def grid_edges(length: int, grid: int) -> np.ndarray:
    """Cell boundaries of a grid-way split of `length` pixels (cells differ by at most one pixel)."""
    return np.rint(np.linspace(0, length, grid + 1)).astype(np.int64)


def patch_labels(id_map: np.ndarray, grid: int) -> list[list[int]]:
    """Object index owning each cell of a grid x grid partition ([row][column], row 0 at the top).

    An object owns a cell when it covers at least 25% of the cell's pixels; the largest coverage wins
    (ties to the lower index); otherwise -1.
    """
    height, width = id_map.shape
    if not 1 <= grid <= min(height, width):
        raise ValueError(f"grid must be between 1 and the image side ({min(height, width)}), got {grid}")
    rows, cols = grid_edges(height, grid), grid_edges(width, grid)
    cell_area = np.outer(np.diff(rows), np.diff(cols))
    labels = np.full((grid, grid), -1, dtype=np.int64)
    best = np.zeros((grid, grid), dtype=np.int64)
    for index in range(int(id_map.max()) + 1):
        mask = (id_map == index).astype(np.int64)
        covered = np.add.reduceat(np.add.reduceat(mask, rows[:-1], axis=0), cols[:-1], axis=1)
        owns = (covered >= OWNERSHIP_FRACTION * cell_area) & (covered > best)
        labels[owns] = index
        best[owns] = covered[owns]
    return labels.tolist()
