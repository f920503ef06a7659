"""The shapes world's vocabulary and scene sampling: what is where, decided before any pixel is drawn.

A scene is a light background plus 1-6 coloured shapes at non-overlapping positions. Every fact a caption
or a question states is computed from the `Scene` (never read back from pixels), so the ground truth is
exact. All randomness comes from the `random.Random` passed in; nothing touches the global RNGs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Saturated, far apart in hue or lightness, and far from every (light, grey-ish) background, so a colour
# name stays unambiguous after antialiasing, the per-object jitter and a resize to 224 px.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "green": (35, 155, 55),
    "blue": (35, 75, 215),
    "yellow": (240, 200, 10),
    "purple": (125, 45, 170),
    "orange": (245, 125, 15),
    "pink": (240, 115, 185),
    "brown": (120, 70, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
SIZES: tuple[str, ...] = ("small", "large")
ALL_COMBOS: tuple[tuple[str, str], ...] = tuple((color, shape) for color in COLORS for shape in SHAPES)
BACKGROUND_KINDS: tuple[str, ...] = ("plain", "gradient", "noise")

# Side of an object's box as a fraction of the image side. The gap between the ranges keeps "small" and
# "large" a visible difference, not a threshold call.
SIZE_FRACTIONS = {"small": (0.13, 0.18), "large": (0.26, 0.34)}
COLOR_JITTER = 8  # per channel; small against the >= 75 RGB distance between any two named colours
PLACEMENT_ATTEMPTS = 60  # random positions tried per object and size before giving the object up
SCENE_ATTEMPTS = 50  # whole-scene retries when too few objects fit (only with cramped settings)
MIN_IMAGE_SIZE = 32


@dataclass(frozen=True)
class WorldObject:
    shape: str
    color: str
    size: str
    # The square box the shape is drawn in, in pixels: x0, y0 inclusive, x1, y1 exclusive.
    bbox: tuple[int, int, int, int]
    rgb: tuple[int, int, int]  # the named colour plus this object's jitter

    @property
    def combo(self) -> tuple[str, str]:
        return (self.color, self.shape)

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return ((x0 + x1) / 2, (y0 + y1) / 2)

    def to_json(self) -> dict:
        return {"shape": self.shape, "color": self.color, "size": self.size, "bbox": list(self.bbox),
                "rgb": list(self.rgb)}


@dataclass(frozen=True)
class Background:
    kind: str  # plain | gradient | noise
    color_a: tuple[int, int, int]
    color_b: tuple[int, int, int]  # the gradient's far end; equal to color_a for the other kinds
    direction: str  # horizontal | vertical | diagonal (gradient only)
    noise_seed: int  # seeds the numpy noise of the `noise` kind

    def to_json(self) -> dict:
        return {"kind": self.kind, "color_a": list(self.color_a), "color_b": list(self.color_b),
                "direction": self.direction, "noise_seed": self.noise_seed}


@dataclass(frozen=True)
class Scene:
    image_size: int
    background: Background
    objects: tuple[WorldObject, ...]

    def combos(self) -> list[tuple[str, str]]:
        return [obj.combo for obj in self.objects]

    def count(self, color: str | None = None, shape: str | None = None) -> int:
        return sum((color is None or obj.color == color) and (shape is None or obj.shape == shape)
                   for obj in self.objects)

    def find(self, color: str, shape: str) -> WorldObject | None:
        return next((obj for obj in self.objects if obj.combo == (color, shape)), None)


def choose_forbidden_combos(seed: int) -> list[tuple[str, str]]:
    """4-6 colour-shape pairs that no training image shows, with distinct colours and distinct shapes, so
    each forbidden pair's colour and shape are still seen in training, only never together."""
    rng = random.Random(f"shapes-forbidden:{seed}")
    count = rng.randint(4, 6)
    colors = rng.sample(sorted(COLORS), count)
    shapes = rng.sample(list(SHAPES), count)
    return sorted(zip(colors, shapes))


def combo_weights(seed: int) -> dict[tuple[str, str], float]:
    """Sampling weight per colour-shape pair: a gentle Zipf skew (about 7x between the most and the least
    common) in a seed-chosen order, so POPE's 'popular' negatives differ from its 'random' ones."""
    rng = random.Random(f"shapes-popularity:{seed}")
    order = list(ALL_COMBOS)
    rng.shuffle(order)
    return {combo: 1.0 / (rank + 1) ** 0.5 for rank, combo in enumerate(order)}


def _light_color(rng: random.Random) -> tuple[int, int, int]:
    level = rng.randint(200, 240)
    return tuple(min(255, level + rng.randint(-12, 12)) for _ in range(3))


def _sample_background(rng: random.Random) -> Background:
    kind = rng.choice(BACKGROUND_KINDS)
    color_a = _light_color(rng)
    color_b = _light_color(rng) if kind == "gradient" else color_a
    direction = rng.choice(("horizontal", "vertical", "diagonal")) if kind == "gradient" else "none"
    return Background(kind, color_a, color_b, direction, rng.getrandbits(31))


def _apart(box_a, box_b, margin: int) -> bool:
    ax0, ay0, ax1, ay1 = box_a
    bx0, by0, bx1, by1 = box_b
    return ax1 + margin <= bx0 or bx1 + margin <= ax0 or ay1 + margin <= by0 or by1 + margin <= ay0


def _jittered(rng: random.Random, color: str) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-COLOR_JITTER, COLOR_JITTER))) for c in COLORS[color])


def _place(rng: random.Random, planned: list[tuple[tuple[str, str], str]], image_size: int) -> list[WorldObject]:
    """Drop each planned object at a random free spot; a large one that finds none is tried small, and
    one that still finds none is left out (bounded work, never an endless search)."""
    border = max(1, round(0.02 * image_size))
    margin = max(2, round(0.04 * image_size))
    placed: list[WorldObject] = []
    for (color, shape), size in planned:
        for size_name in ((size, "small") if size == "large" else (size,)):
            low, high = SIZE_FRACTIONS[size_name]
            obj = None
            for _ in range(PLACEMENT_ATTEMPTS):
                side = max(6, round(image_size * rng.uniform(low, high)))
                x0 = rng.randint(border, image_size - border - side)
                y0 = rng.randint(border, image_size - border - side)
                box = (x0, y0, x0 + side, y0 + side)
                if all(_apart(box, other.bbox, margin) for other in placed):
                    obj = WorldObject(shape, color, size_name, box, _jittered(rng, color))
                    break
            if obj is not None:
                placed.append(obj)
                break
    return placed


def _weighted_draws(rng: random.Random, pool: list, weights: dict, count: int) -> list:
    pool = list(pool)
    drawn = []
    for _ in range(min(count, len(pool))):
        choice = rng.choices(pool, weights=[weights.get(item, 1.0) for item in pool])[0]
        pool.remove(choice)
        drawn.append(choice)
    return drawn


def sample_scene(rng: random.Random, image_size: int, min_objects: int = 1, max_objects: int = 6,
                 forbidden_combos=(), required_combos=(), weights: dict | None = None) -> Scene:
    """A random scene. Colour-shape pairs are unique within a scene (so "the red circle" always names one
    object); `forbidden_combos` never appear; every pair in `required_combos` does (the compositional
    split asks for forbidden pairs this way)."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE} px, got {image_size}")
    required = list(dict.fromkeys(tuple(combo) for combo in required_combos))
    if not 1 <= min_objects <= max_objects or len(required) > max_objects:
        raise ValueError(f"need 1 <= min_objects ({min_objects}) <= max_objects ({max_objects}) and at most "
                         f"max_objects required pairs ({len(required)})")
    unknown = [combo for combo in required if combo not in ALL_COMBOS]
    if unknown:
        raise ValueError(f"unknown colour-shape pairs {unknown}")
    banned = {tuple(combo) for combo in forbidden_combos}
    pool = [combo for combo in ALL_COMBOS if combo not in banned and combo not in required]
    weights = weights or {}
    background = _sample_background(rng)
    for _ in range(SCENE_ATTEMPTS):
        target = rng.randint(max(min_objects, len(required)), max_objects)
        combos = required + _weighted_draws(rng, pool, weights, target - len(required))
        planned = [(combo, rng.choice(SIZES)) for combo in combos]
        # Required pairs first (an empty canvas always has room), then large before small: packs better.
        planned = planned[:len(required)] + sorted(planned[len(required):], key=lambda p: p[1] != "large")
        objects = _place(rng, planned, image_size)
        if len(objects) >= min_objects and all(any(o.combo == c for o in objects) for c in required):
            rng.shuffle(objects)  # object order (= id-map index) carries no size or placement bias
            return Scene(image_size, background, tuple(objects))
    raise RuntimeError(f"could not place {min_objects} objects in a {image_size}px image after "
                       f"{SCENE_ATTEMPTS} tries; lower min_objects or raise image_size")


def scene_from_json(data: dict) -> Scene:
    """The `Scene` of one `scenes_{split}.jsonl` line (the inverse of the generator's serialisation)."""
    background = data["background"]
    return Scene(int(data["image_size"]),
                 Background(background["kind"], tuple(background["color_a"]), tuple(background["color_b"]),
                            background["direction"], int(background["noise_seed"])),
                 tuple(WorldObject(obj["shape"], obj["color"], obj["size"], tuple(obj["bbox"]), tuple(obj["rgb"]))
                       for obj in data["objects"]))
