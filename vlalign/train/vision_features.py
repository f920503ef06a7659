"""`data.cache_vision_features`: run the frozen vision tower once per image, then read its output.

In stage 1 and in stage 2 with a frozen tower (LLaVA's recipes), the tower's output for an image never changes,
yet an uncached run recomputes it for every image of every epoch. Here the distinct images of the training set
are run through the tower once (batched, on the training device, under the training autocast) and stored as float16 rows under
`<cache root>/<key>/` (vlalign.data.feature_store); the dataset then hands the rows to the model in place of
pixels, so the images are not even decoded. The key hashes the tower's weights and settings and the image
transform, so stage 2, a second objective run and the next call of the demo find the features stage 1 made.
Only deterministic image transforms exist in vlalign (pad / resize / crop), so no augmentation can be cached
by mistake.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vlalign.data.feature_store import FeatureStore, VisionFeatureSource
from vlalign.data.images import load_image
from vlalign.models.fingerprint import update_with_weights

BATCH_IMAGES = 32


def default_root() -> Path:
    return Path(os.environ.get("VLALIGN_CACHE", Path.home() / ".cache" / "vlalign")) / "vision_features"


def tower_key(model, precision: str) -> str:
    """What the features depend on: the tower's weights, how it is read, the image transform, and the autocast
    precision they are computed under (`train.mixed_precision`)."""
    tower, config, digest = model.vision_tower, model.config, hashlib.sha256()
    settings = {"precision": precision, "tower": config.vision_tower, "layer": config.vision_feature_layer,
                "select": config.vision_feature_select, "stage": config.vision_feature_stage,
                "image_size": tower.image_size, "aspect": config.image_aspect, "mean": list(tower.image_mean),
                "std": list(tower.image_std), "class": type(tower).__name__}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    update_with_weights(digest, tower)
    return digest.hexdigest()[:24]


def attach_vision_features(model, dataset, root: str | None, accelerator) -> dict:
    """Fill the cache with the dataset's missing images and make the dataset read from it. Images that do not
    decode are left out here; the dataset meets them again and reports them as it always does (error, or a
    counted skip under data.on_error=skip)."""
    folder = (Path(root) if root else default_root()) / tower_key(model, str(accelerator.mixed_precision))
    paths = list(dict.fromkeys(record.image for record in dataset.records if record.image is not None))
    with accelerator.main_process_first():  # the main process computes; the others then find it complete
        store = FeatureStore(folder)
        digests = store.digests(paths)
        missing = list(dict.fromkeys(d for d in digests if d not in store))
        computed = 0
        if missing and accelerator.is_main_process:
            first_path = {digest: path for path, digest in zip(reversed(paths), reversed(digests))}
            # under the training autocast, as an uncached step runs the tower (and 3x faster in bf16 on a CPU)
            with accelerator.autocast():
                computed = _compute(model, store, [first_path[d] for d in missing], missing, dataset.transform,
                                    accelerator)
        store.reload()
    dataset.feature_source = VisionFeatureSource(folder, {str(p): d for p, d in zip(paths, digests)})
    unreadable = len(missing) - computed if accelerator.is_main_process else 0
    summary = {"folder": str(folder), "images": len(paths), "computed": computed, "unreadable": unreadable}
    accelerator.print(f"[vlalign] vision features cached in {folder}: {len(paths)} images, {computed} computed now, "
                      f"{len(paths) - len(missing)} read from earlier runs"
                      + (f", {unreadable} unreadable (reported by the data loader)" if unreadable else ""))
    return summary


@torch.no_grad()
def _compute(model, store: FeatureStore, paths: list[Path], digests: list[str], transform, accelerator) -> int:
    tower = model.vision_tower
    tower.to(accelerator.device)  # accelerate moves the rest later; the tower is needed now
    was_training = tower.training
    tower.eval()
    with tqdm(total=len(paths), desc="vision features (cached once)", unit="image") as bar:
        def rows(start: int, stop: int):
            pixels, done = [], []
            for path, digest in zip(paths[start:stop], digests[start:stop]):
                try:
                    pixels.append(transform(load_image(path)))
                    done.append(digest)
                except OSError:
                    continue  # the dataset reports it when it meets the record
            if not pixels:
                return None, []
            return tower(torch.stack(pixels).to(accelerator.device)).float().cpu().numpy(), done

        stored = store.write_shard(digests, rows, BATCH_IMAGES, progress=bar.update)
    tower.train(was_training)
    return stored
