"""Write a whole shapes world to a folder: images, per-image ground truth, training sets, test sets.

Layout under `out_dir` (all image paths in the JSON files are relative to it):
  images/{train,test,compositional}/NNNNNN.png
  scenes_{train,test,compositional}.jsonl   ground truth per image (objects, bboxes, patch labels)
  stage1.json, stage2.json                  LLaVA JSON training sets (train images only)
  test/*.json                               held-out sets (see benchmarks.py)
  test/official/                            the same sets in POPE's, MME's, ScienceQA's and GQA's own
                                            formats (see official_formats.py)
  manifest.json                             parameters, counts, vocabulary, suffixes; written last
Every random choice comes from a `random.Random` seeded by (seed, purpose[, index]), so the same
arguments give the same bytes, and image i of a split does not depend on how many images there are.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from vlalign.data.shapes import benchmarks
from vlalign.data.shapes.benchmarks import Entry
from vlalign.data.shapes.instructions import YesNoBalancer, stage1_record, stage2_record
from vlalign.data.shapes.language import HELD_OUT_CAPTION_TEMPLATES, TRAIN_CAPTION_TEMPLATES
from vlalign.data.shapes.negatives import WorldStats
from vlalign.data.shapes.official_formats import write_official_formats
from vlalign.data.shapes.questions import SUFFIXES
from vlalign.data.shapes.render import patch_labels, render
from vlalign.data.shapes.text_only import text_only_records
from vlalign.data.shapes.world import (BACKGROUND_KINDS, COLORS, MIN_IMAGE_SIZE, SHAPES, SIZES,
                                       choose_forbidden_combos, combo_weights, sample_scene)
from vlalign.errors import ConfigError

WORLD_VERSION = 2  # bump whenever the output for the same arguments changes: invalidates cached worlds
SPLITS = ("train", "test", "compositional")
TEXT_ONLY_SHARE = 0.05  # text-only records per training image (LLaVA-665K has about 6%)


def n_compositional(n_test: int) -> int:
    return max(20, n_test // 4)


def world_params(n_train: int, n_test: int, seed: int, image_size: int, grids) -> dict:
    return {"n_train": n_train, "n_test": n_test, "n_compositional": n_compositional(n_test), "seed": seed,
            "image_size": image_size, "grids": [int(g) for g in grids]}


def _check_params(n_train: int, n_test: int, image_size: int, grids) -> None:
    if n_train < 1 or n_test < 1:
        raise ConfigError(f"n_train and n_test must be at least 1, got {n_train} and {n_test}")
    if image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"image_size must be at least {MIN_IMAGE_SIZE} px, got {image_size}")
    if not grids or any(not 1 <= int(g) <= image_size for g in grids):
        raise ConfigError(f"grids must be 1..image_size ({image_size}) each, got {list(grids)}")


def _rng(seed: int, purpose: str) -> random.Random:
    return random.Random(f"shapes:{seed}:{purpose}")  # str seeds hash the same in every process


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def _make_split(out_dir: Path, split: str, count: int, seed: int, image_size: int, grids,
                forbidden: list, weights: dict) -> list[Entry]:
    """Sample, render and save the split's images; write scenes_{split}.jsonl."""
    (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
    entries, lines = [], []
    for index in range(count):
        rng = _rng(seed, f"{split}:{index}")
        required = rng.sample(forbidden, rng.choice((1, 1, 2))) if split == "compositional" else ()
        scene = sample_scene(rng, image_size, forbidden_combos=forbidden, required_combos=required, weights=weights)
        image, id_map = render(scene)
        entry = Entry(f"{split}-{index:06d}", f"images/{split}/{index:06d}.png", scene)
        image.save(out_dir / entry.image, compress_level=1)  # fast; these PNGs are small either way
        objects = [{"index": i, **obj.to_json(), "area": int((id_map == i).sum())}
                   for i, obj in enumerate(scene.objects)]
        lines.append(json.dumps({
            "id": entry.id, "image": entry.image, "split": split, "image_size": image_size,
            "background": scene.background.to_json(), "objects": objects,
            "patch_labels": {str(g): patch_labels(id_map, int(g)) for g in grids}}, separators=(",", ":")))
        entries.append(entry)
    (out_dir / f"scenes_{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return entries


def _manifest(params: dict, counts: dict, files: dict, forbidden, stats) -> dict:
    """What a world folder holds and how to read it; written last, so it marks a complete world."""
    return {
        "version": WORLD_VERSION, "generator": "vlalign.data.shapes", "params": params, "counts": counts,
        "files": sorted(files) + [f"scenes_{split}.jsonl" for split in SPLITS],
        "vocab": {"colors": {name: list(rgb) for name, rgb in COLORS.items()}, "shapes": list(SHAPES),
                  "sizes": list(SIZES), "backgrounds": list(BACKGROUND_KINDS)},
        "forbidden_combos": [list(combo) for combo in forbidden],
        "prompt_suffixes": SUFFIXES,
        "caption_templates": {"train": list(TRAIN_CAPTION_TEMPLATES), "held_out": list(HELD_OUT_CAPTION_TEMPLATES)},
        "conventions": {
            "bbox": "pixels [x0, y0, x1, y1]: x0, y0 inclusive, x1, y1 exclusive; the square the shape is drawn in",
            "patch_labels": "per grid g, a g x g list [row][column] (row 0 at the top) of the object index "
                            "covering >= 25% of the cell (largest coverage wins), else -1",
            "counts": "short answers give counts as digits",
        },
        "most_common_train_combos": stats.to_json(),
    }


def generate_world(out_dir, n_train: int, n_test: int, seed: int = 0, image_size: int = 224,
                   grids=(7, 14)) -> dict:
    """Write the world (see the module docstring) and return its manifest."""
    _check_params(n_train, n_test, image_size, grids)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)  # a half-rewritten world must not look cached
    params = world_params(n_train, n_test, seed, image_size, grids)
    forbidden = choose_forbidden_combos(seed)
    weights = combo_weights(seed)
    sizes = {"train": n_train, "test": n_test, "compositional": params["n_compositional"]}
    entries = {split: _make_split(out_dir, split, sizes[split], seed, image_size, params["grids"], forbidden, weights)
               for split in SPLITS}
    stats = WorldStats.from_scenes([entry.scene for entry in entries["train"]])

    rng = _rng(seed, "stage1")
    stage1 = [stage1_record(f"stage1-{e.id}", e.image, e.scene, rng) for e in entries["train"]]
    rng, balancer = _rng(seed, "stage2"), YesNoBalancer()
    stage2 = [stage2_record(f"stage2-{e.id}", e.image, e.scene, rng, stats, forbidden, balancer)
              for e in entries["train"]]
    text_only = text_only_records(max(4, round(n_train * TEXT_ONLY_SHARE)), _rng(seed, "text"))
    test, comp = entries["test"], entries["compositional"]
    files = {
        "stage1.json": stage1,
        "stage2.json": stage2 + text_only,
        "test/pope.json": benchmarks.build_pope(test, _rng(seed, "pope"), stats, forbidden),
        "test/gqa.json": benchmarks.build_gqa(test, _rng(seed, "gqa"), forbidden),
        "test/sqa.json": benchmarks.build_sqa(test, _rng(seed, "sqa"), forbidden),
        "test/mme.json": benchmarks.build_mme(test, _rng(seed, "mme"), stats, forbidden),
        "test/captions.json": benchmarks.build_captions(test, _rng(seed, "captions"), TRAIN_CAPTION_TEMPLATES,
                                                        "caption"),
        "test/captions_heldout_templates.json": benchmarks.build_heldout_captions(
            test, _rng(seed, "heldout-captions"), "heldout-caption"),
        "test/compositional_captions.json": benchmarks.build_heldout_captions(
            comp, _rng(seed, "compositional-captions"), "compositional-caption"),
        "test/compositional_gqa.json": benchmarks.build_compositional_gqa(
            comp, _rng(seed, "compositional-gqa"), stats, forbidden),
    }
    for name, records in files.items():
        _write_json(out_dir / name, records)
    official = write_official_formats(out_dir, files)

    counts = {f"images/{split}": len(entries[split]) for split in SPLITS}
    counts.update({name: len(records) for name, records in files.items()})
    counts.update(official)
    counts["stage2.json (text-only)"] = len(text_only)
    manifest = _manifest(params, counts, files, forbidden, stats)
    _write_json(out_dir / "manifest.json", manifest)
    return manifest


def is_cached(out_dir, n_train: int, n_test: int, seed: int = 0, image_size: int = 224, grids=(7, 14)) -> bool:
    """True when `out_dir` holds a complete world of this version made with exactly these arguments."""
    out_dir = Path(out_dir)
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if manifest.get("version") != WORLD_VERSION or manifest.get("params") != world_params(
            n_train, n_test, seed, image_size, grids):
        return False
    if not all((out_dir / name).is_file() for name in manifest.get("files", [])):
        return False
    for split in SPLITS:
        folder = out_dir / "images" / split
        present = {path.name for path in folder.iterdir()} if folder.is_dir() else set()
        if any(f"{index:06d}.png" not in present for index in range(manifest["counts"][f"images/{split}"])):
            return False
    return True
