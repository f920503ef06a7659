"""The shapes world: a deterministic synthetic visual world with exact ground truth (the offline demo
data). `generate_world` writes images, per-image ground truth, LLaVA-JSON training sets and
benchmark-style test sets; `is_cached` says whether a folder already holds one for given arguments."""

from vlalign.data.shapes.generate import WORLD_VERSION, generate_world, is_cached
from vlalign.data.shapes.render import patch_labels, render
from vlalign.data.shapes.world import COLORS, SHAPES, SIZES, Scene, WorldObject, sample_scene, scene_from_json

__all__ = ["COLORS", "SHAPES", "SIZES", "WORLD_VERSION", "Scene", "WorldObject", "generate_world", "is_cached",
           "patch_labels", "render", "sample_scene", "scene_from_json"]
