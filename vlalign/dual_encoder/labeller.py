"""`vlalign label-patches`: SEA's offline step (SEA Sec. 4.1) over a LLaVA JSON set or an image folder.

  1. list the images (each distinct `image` string once: it is the key the training batches carry);
  2. open or resume the cache (vlalign.labels.cache); nothing to do -> straight to the summary;
  3. embed the word list once with the dual encoder's text side;
  4. per batch of images: patch embeddings -> `labels.topn.label_patches` -> one shard per `shard_size`
     images, written atomically (an interrupted run keeps its whole shards and labels only the rest);
  5. summary.json + label_summary.png: how much of the word list the labels use (top-1 / any label) and the
     score distributions (the paper's Fig. 6), with the labelling throughput.

Images go through the dual encoder's own resize and normalisation, but with the VLM's `image_aspect`
(default `pad`, LLaVA-1.5's), so that a patch covers the same part of the picture for the labeller as
for the VLM's tower; the cache records the aspect and the objective checks it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
from tqdm.auto import tqdm

matplotlib.use("Agg")  # before pyplot: no display here
import matplotlib.pyplot as plt  # noqa: E402

from vlalign.data.images import ImageTransform, load_image
from vlalign.data.llava_json import load_records
from vlalign.errors import ConfigError, DataError
from vlalign.dual_encoder.checkpoint import CONFIG_FILE, FORMAT, HEADS_FILE, load_dual_encoder
from vlalign.dual_encoder.hf import HFDualEncoder
from vlalign.labels.cache import LabelCache, LabelCacheWriter
from vlalign.labels.topn import label_patches

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
SCORE_BINS = np.linspace(0.0, 1.0, 51)  # labels are cosines in [0, 1] once negatives are dropped
SUMMARY_FILE, PLOT_FILE = "summary.json", "label_summary.png"


@dataclass(frozen=True)
class ImageItem:
    key: str  # the record's `image` string (relative to the image root)
    path: Path
    record_id: str | None  # first record that names the image; for error messages
    source: str  # data file or folder


def collect_images(data: str | Path | None, image_root: str | Path | None) -> list[ImageItem]:
    """Distinct images of a LLaVA JSON/JSONL set (text-only records ignored), or every image under a folder."""
    if data is not None:
        items: dict[str, ImageItem] = {}
        for record in load_records(data, image_root):
            if record.image is not None and record.image_key not in items:
                items[record.image_key] = ImageItem(record.image_key, record.image, record.id, str(data))
        found = list(items.values())
    elif image_root is not None:
        root = Path(image_root)
        if not root.is_dir():
            raise ConfigError(f"--image-root {root} is not a folder")
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        found = [ImageItem(p.relative_to(root).as_posix(), p, None, str(root)) for p in paths]
    else:
        raise ConfigError("give --data (a LLaVA JSON file) or --image-root (a folder of images)")
    if not found:
        raise ConfigError(f"no images to label in {data if data is not None else image_root}")
    return found


def load_encoder(source: str):
    """(dual encoder, fingerprint): a folder written by `vlalign train-dual-encoder`, or an HF CLIP/SigLIP."""

    folder = Path(source)
    config_path = folder / CONFIG_FILE
    digest = hashlib.sha256()
    if config_path.is_file():
        digest.update(config_path.read_bytes())
        if json.loads(config_path.read_text()).get("format") == FORMAT:
            digest.update((folder / HEADS_FILE).read_bytes() if (folder / HEADS_FILE).is_file() else b"")
            return load_dual_encoder(folder), digest.hexdigest()
    else:
        digest.update(source.encode())  # a hub id: the id (and revision it resolves to) names the weights
    return HFDualEncoder.from_pretrained(source), digest.hexdigest()


@torch.no_grad()
def embed_words(encoder, words: list[str], template: str = "{}", batch_size: int = 256,
                progress: bool = True) -> torch.Tensor:
    """[W, D] text embeddings of the word list (each word through `template`), unit length."""
    if "{}" not in template:
        raise ConfigError(f"--template {template!r} has no '{{}}' for the word")
    rows = []
    for start in tqdm(range(0, len(words), batch_size), desc="word embeddings", unit="batch", disable=not progress):
        chunk = [template.format(word) for word in words[start:start + batch_size]]
        rows.append(torch.nn.functional.normalize(encoder.encode_texts(chunk).float(), dim=-1))
    return torch.cat(rows)


def _pixels(transform: ImageTransform, items: list[ImageItem]) -> torch.Tensor:
    batch = []
    for item in items:
        try:
            batch.append(transform(load_image(item.path)))
        except OSError as exc:
            raise DataError(f"cannot read image {item.path}: {exc}", reason="unreadable_image",
                            record_id=item.record_id, file=item.source, field="image") from exc
    return torch.stack(batch)


@torch.no_grad()
def label_images(encoder, items: list[ImageItem], words: list[str], out: str | Path, *, encoder_id: str,
                 fingerprint: str, top_n: int = 10, batch_size: int = 32, shard_size: int = 1024,
                 template: str = "{}", image_aspect: str = "pad", device: str = "cpu",
                 progress: bool = True) -> dict:
    """Label every image's patches into the cache at `out` (resuming it), then summarise; returns the summary."""
    if top_n < 1 or batch_size < 1 or shard_size < 1:
        raise ConfigError(f"--top-n, --batch-size and --shard-size must be >= 1 (got {top_n}, {batch_size}, {shard_size})")
    base = encoder.image_transform
    transform = ImageTransform(base.size, base.mean, base.std, image_aspect)
    spec = {"encoder": encoder_id, "encoder_fingerprint": fingerprint, "top_n": top_n,
            "grid": list(encoder.patch_grid), "image_aspect": image_aspect, "template": template,
            "shard_size": shard_size, "image_size": base.size}
    writer = LabelCacheWriter(out, spec, words, [item.key for item in items])
    pending = writer.pending()
    by_key = {item.key: item for item in items}
    started, patches = time.perf_counter(), 0
    word_seconds = 0.0
    if pending:
        encoder = encoder.to(device).eval()
        word_embeds = embed_words(encoder, words, template, progress=progress).to(device)
        word_seconds = time.perf_counter() - started
        done = len(items) - sum(len(writer.plan[shard]) for shard in pending)
        with tqdm(total=len(items), initial=done, desc="label patches", unit="img", disable=not progress) as bar:
            for shard in pending:
                keys = writer.plan[shard]
                indices, scores = [], []
                for start in range(0, len(keys), batch_size):
                    chunk = [by_key[key] for key in keys[start:start + batch_size]]
                    patch_embeds = encoder.encode_patches(_pixels(transform, chunk).to(device))
                    count, per_image, width = patch_embeds.shape
                    chunk_indices, chunk_scores = label_patches(patch_embeds.reshape(-1, width), word_embeds, top_n)
                    indices.append(chunk_indices.reshape(count, per_image, top_n).cpu().numpy())
                    scores.append(chunk_scores.reshape(count, per_image, top_n).cpu().numpy())
                    patches += count * per_image
                    bar.update(count)
                writer.write_shard(shard, np.concatenate(indices), np.concatenate(scores))
    writer.finalize()
    seconds = time.perf_counter() - started
    summary = summarize(LabelCache(out))
    summary["run"] = {"images_labelled": sum(len(writer.plan[s]) for s in pending), "shards_reused":
                      len(writer.plan) - len(pending), "seconds": seconds, "word_embedding_seconds": word_seconds,
                      "patches_per_second": patches / max(seconds - word_seconds, 1e-9) if patches else None}
    Path(out, SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    plot_summary(summary, Path(out) / PLOT_FILE)
    return summary


def summarize(cache: LabelCache, most_common: int = 20) -> dict:
    """Word-list utilisation and score distributions over the whole cache (SEA Sec. 5.1, Fig. 6)."""
    words = cache.words
    top1, used, score_sum = (np.zeros(len(words)) for _ in range(3))
    histogram = np.zeros(len(SCORE_BINS) - 1, dtype=np.int64)
    patches = unlabelled = slots = dropped = 0
    for indices, scores in cache.iter_shards():
        indices, scores = np.asarray(indices).reshape(-1, cache.top_n), np.asarray(scores, np.float32).reshape(-1, cache.top_n)
        valid = indices >= 0
        patches += len(indices)
        unlabelled += int((~valid.any(axis=1)).sum())
        candidates = min(cache.top_n, len(words))  # slots beyond the word count are never labels
        slots += len(indices) * candidates
        dropped += int((~valid[:, :candidates]).sum())
        top1 += np.bincount(indices[valid[:, 0], 0], minlength=len(words))
        used += np.bincount(indices[valid], minlength=len(words))
        score_sum += np.bincount(indices[valid], weights=scores[valid], minlength=len(words))
        histogram += np.histogram(scores[valid], bins=SCORE_BINS)[0]
    label_scores = histogram.sum()
    # Fig. 6b: a word's mean score over all patches, 0 where it is not among the patch's labels
    word_mean = score_sum / max(patches, 1)
    centres = (SCORE_BINS[:-1] + SCORE_BINS[1:]) / 2
    order = np.argsort(-top1, kind="stable")[:most_common]
    return {"cache": str(cache.folder), "encoder": cache.manifest["encoder"], "images": len(cache),
            "grid": list(cache.grid), "top_n": cache.top_n, "words": len(words), "patches": patches,
            "patches_without_label": unlabelled,
            "utilisation": {"top1": float((top1 > 0).mean()), "any_label": float((used > 0).mean())},
            "negative_share": dropped / max(slots, 1),  # the paper's "32.7% of labels below 0"
            "label_scores": {"count": int(label_scores),
                             "mean": float((histogram * centres).sum() / max(label_scores, 1)),
                             "bins": SCORE_BINS.tolist(), "counts": histogram.tolist()},
            "word_mean_score": {"bins": np.histogram_bin_edges(word_mean, bins=50).tolist(),
                                "counts": np.histogram(word_mean, bins=50)[0].tolist(),
                                "mean": float(word_mean.mean())},
            "most_common_top1": {words[i]: int(top1[i]) for i in order if top1[i] > 0}}


def plot_summary(summary: dict, path: Path) -> Path:
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    label = summary["label_scores"]
    left.stairs(label["counts"], label["bins"], fill=True)
    left.set(title=f"(a) scores of the {label['count']:,} patch labels", xlabel="cosine similarity", ylabel="labels")
    word = summary["word_mean_score"]
    right.stairs(word["counts"], word["bins"], fill=True)
    right.set_yscale("log")
    use = summary["utilisation"]
    right.set(title=f"(b) mean score per word ({summary['words']:,} words)",
              xlabel="mean similarity over all patches (0 where not a label)", ylabel="words")
    figure.suptitle(f"SEA patch labels: {summary['images']:,} images, grid {summary['grid'][0]}x{summary['grid'][1]}, "
                    f"top-{summary['top_n']}; word list used: {use['any_label']:.1%} as any label, "
                    f"{use['top1']:.1%} as top-1; {summary['negative_share']:.1%} of top-n candidates below 0")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
