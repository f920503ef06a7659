"""A small generated LLaVA-JSON set (coloured shapes) for the quickstart run and the integration tests.

Every caption and answer is known exactly. The full synthetic world of the demo (relations, POPE/MME
style test sets, per-patch ground truth) builds on this; this module keeps only what a two-stage run
needs: stage-1 captions and stage-2 multi-turn instructions, including text-only records.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
          "purple": (140, 60, 180), "orange": (245, 140, 30)}
SHAPES = ("circle", "square", "triangle")


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    left, top, right, bottom = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((left + right) // 2, top), (right, bottom), (left, bottom)], fill=fill)


def _scene(rng: random.Random, size: int) -> tuple[Image.Image, list[tuple[str, str, str]]]:
    """An image with 1-2 non-overlapping objects; returns (image, [(color, shape, side)])."""
    background = tuple(rng.randint(200, 255) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    objects = []
    sides = rng.sample(["left", "right"], rng.randint(1, 2))
    for side in sides:
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        extent = rng.randint(size // 4, size // 3)
        x0 = rng.randint(4, size // 2 - extent - 4) + (size // 2 if side == "right" else 0)
        y0 = rng.randint(4, size - extent - 4)
        _draw(draw, shape, (x0, y0, x0 + extent, y0 + extent), COLORS[color])
        objects.append((color, shape, side))
    return image, objects


def _caption(objects) -> str:
    parts = [f"a {color} {shape} on the {side}" for color, shape, side in objects]
    return "There is " + " and ".join(parts) + "."


def _instruction(record_id: str, image: str, objects, rng: random.Random) -> dict:
    color, shape, _ = rng.choice(objects)
    count = len(objects)
    return {"id": record_id, "image": image, "conversations": [
        {"from": "human", "value": f"<image>\nWhat color is the {shape}?"},
        {"from": "gpt", "value": f"The {shape} is {color}."},
        {"from": "human", "value": "How many shapes are in the picture?"},
        {"from": "gpt", "value": f"There {'is one shape' if count == 1 else f'are {count} shapes'}."},
    ]}


def write_toy_dataset(out_dir: str | Path, n_images: int = 64, seed: int = 0, size: int = 224) -> dict[str, Path]:
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    captions, instructions = [], []
    for index in range(n_images):
        image, objects = _scene(rng, size)
        name = f"images/{index:05d}.png"
        image.save(out_dir / name)
        captions.append({"id": f"cap-{index:05d}", "image": name, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image briefly."},
            {"from": "gpt", "value": _caption(objects)}]})
        instructions.append(_instruction(f"inst-{index:05d}", name, objects, rng))
    for index, color in enumerate(sorted(COLORS)):  # text-only turns, as LLaVA-665K has
        instructions.append({"id": f"text-{index}", "conversations": [
            {"from": "human", "value": f"Name a fruit that can be {color}."},
            {"from": "gpt", "value": f"An apple can be {color}." if color in ("red", "green", "yellow")
             else f"A {color} fruit is rare; plums can look {color}."}]})
    paths = {"stage1": out_dir / "stage1.json", "stage2": out_dir / "stage2.json", "image_root": out_dir}
    paths["stage1"].write_text(json.dumps(captions, indent=1))
    paths["stage2"].write_text(json.dumps(instructions, indent=1))
    return paths
