"""The on-disk SEA patch-label cache: sharded, resumable, keyed by the record's `image` string.

Layout of a cache folder:
  manifest.json          what the labels depend on: encoder + fingerprint, word-list SHA-256, top_n, patch
                         grid, image aspect, shard size. Written first; a restart with other settings is an
                         error, never a silent mix of two labellings.
  words.txt              the word list itself (label id = line number), so the cache stands alone.
  shards/NNNNN.indices.npy  int32 [n, rows*cols, top_n], -1 = no label (similarity below 0)
  shards/NNNNN.scores.npy   float16 [n, rows*cols, top_n], cosine similarity, 0 where the index is -1
  shards/NNNNN.json      the shard's image keys; written last, so its presence means the shard is whole
  index.json             image key -> [shard, row]; written when every shard is done = the cache is complete

Writes go to a temporary name and are renamed into place, so an interrupted run leaves only whole shards;
the next run keeps those and labels the rest. int32 because real word lists exceed int16 (2of12: 41K);
float16 keeps ~3 significant digits of a cosine, more than sampling by score needs, at half the bytes.
Shards are read through memory maps: a step touches only the rows of its own images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vlalign.errors import ConfigError, DataError
from vlalign.files import write_file_atomically
from vlalign.labels.words import words_digest

FORMAT = "vlalign-sea-labels"
FORMAT_VERSION = 1
MANIFEST, WORDS, INDEX, SHARDS = "manifest.json", "words.txt", "index.json", "shards"
# Settings that decide what the labels mean: a resumed run must agree on every one of them.
IDENTITY_FIELDS = ("encoder", "encoder_fingerprint", "words_sha256", "num_words", "top_n", "grid",
                   "image_aspect", "template", "shard_size")


def _write_json(path: Path, value) -> None:
    write_file_atomically(path, json.dumps(value, indent=1))


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist ({what})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


class LabelCacheWriter:
    """Plans the shards for a fixed list of image keys and writes them; skips shards already complete."""

    def __init__(self, folder: str | Path, spec: dict, words: list[str], keys: list[str]):
        self.folder = Path(folder)
        self.spec = {"format": FORMAT, "format_version": FORMAT_VERSION, **spec,
                     "words_sha256": words_digest(words), "num_words": len(words)}
        missing = [name for name in IDENTITY_FIELDS if name not in self.spec]
        if missing:
            raise ValueError(f"label cache spec lacks {missing}")
        if len(set(keys)) != len(keys):
            raise ValueError("image keys must be distinct (deduplicate images before labelling)")
        size = self.spec["shard_size"]
        self.plan = [keys[start:start + size] for start in range(0, len(keys), size)]
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / SHARDS).mkdir(exist_ok=True)
        self._check_or_write_manifest(words)

    def _check_or_write_manifest(self, words: list[str]) -> None:
        path = self.folder / MANIFEST
        if path.is_file():
            old = _read_json(path, "label cache manifest")
            for name in IDENTITY_FIELDS:
                if old.get(name) != self.spec.get(name):
                    raise ConfigError(f"{path}: this cache was written with {name} = {old.get(name)!r}, this run "
                                      f"has {self.spec.get(name)!r}; use another --out folder or delete it")
        (self.folder / INDEX).unlink(missing_ok=True)  # complete again only when every planned shard is
        write_file_atomically(self.folder / WORDS, "\n".join(words) + "\n")
        _write_json(path, self.spec)

    def _shard_path(self, shard: int, suffix: str) -> Path:
        return self.folder / SHARDS / f"{shard:05d}.{suffix}"

    def is_complete(self, shard: int) -> bool:
        marker = self._shard_path(shard, "json")
        if not marker.is_file():
            return False
        try:
            return json.loads(marker.read_text())["keys"] == self.plan[shard]
        except (json.JSONDecodeError, KeyError, TypeError):
            return False  # a damaged marker: label the shard again

    def pending(self) -> list[int]:
        return [shard for shard in range(len(self.plan)) if not self.is_complete(shard)]

    def write_shard(self, shard: int, indices: np.ndarray, scores: np.ndarray) -> None:
        keys = self.plan[shard]
        rows, cols = self.spec["grid"]
        expected = (len(keys), rows * cols, self.spec["top_n"])
        if indices.shape != expected or scores.shape != expected:
            raise ValueError(f"shard {shard}: indices {indices.shape} / scores {scores.shape}, expected {expected}")
        write_file_atomically(self._shard_path(shard, "indices.npy"), lambda h: np.save(h, indices.astype(np.int32)))
        write_file_atomically(self._shard_path(shard, "scores.npy"), lambda h: np.save(h, scores.astype(np.float16)))
        _write_json(self._shard_path(shard, "json"), {"keys": keys})  # last: marks the shard whole

    def finalize(self) -> Path:
        pending = self.pending()
        if pending:
            raise RuntimeError(f"{self.folder}: shards {pending[:5]} are not written yet")
        index = {key: [shard, row] for shard, keys in enumerate(self.plan) for row, key in enumerate(keys)}
        _write_json(self.folder / INDEX, {"images": len(index), "shards": len(self.plan), "index": index})
        return self.folder


class LabelCache:
    """Read side: `lookup(keys)` -> (indices [I, P, top_n] int64, scores [I, P, top_n] float32)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ConfigError(f"SEA label cache {self.folder} does not exist; create it with `vlalign label-patches`")
        self.manifest = _read_json(self.folder / MANIFEST, "not a SEA label cache?")
        if self.manifest.get("format") != FORMAT:
            raise ConfigError(f"{self.folder / MANIFEST}: field 'format' should be {FORMAT!r}, "
                              f"got {self.manifest.get('format')!r}")
        if self.manifest.get("format_version", 0) > FORMAT_VERSION:
            raise ConfigError(f"{self.folder / MANIFEST}: format_version {self.manifest['format_version']} is newer "
                              f"than this vlalign reads ({FORMAT_VERSION})")
        words_path = self.folder / WORDS
        if not words_path.is_file():
            raise ConfigError(f"{words_path} does not exist (an incomplete SEA label cache)")
        self.words = words_path.read_text(encoding="utf-8").splitlines()
        if words_digest(self.words) != self.manifest["words_sha256"]:
            raise ConfigError(f"{words_path}: does not match the word-list hash in {MANIFEST} (edited by hand?)")
        index_path = self.folder / INDEX
        if not index_path.is_file():
            raise ConfigError(f"SEA label cache {self.folder} is incomplete (no {INDEX}): run `vlalign label-patches` "
                              f"again with the same --out to finish it (completed shards are kept)")
        stored = _read_json(index_path, "label cache index")
        self.index: dict[str, list[int]] = stored["index"]
        self.num_shards = int(stored["shards"])
        self._shards: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.manifest["grid"])

    @property
    def top_n(self) -> int:
        return int(self.manifest["top_n"])

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def _shard(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        if shard not in self._shards:
            base = self.folder / SHARDS / f"{shard:05d}"
            self._shards[shard] = (np.load(f"{base}.indices.npy", mmap_mode="r"),
                                   np.load(f"{base}.scores.npy", mmap_mode="r"))
        return self._shards[shard]

    def lookup(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        indices, scores = [], []
        for key in keys:
            where = self.index.get(key)
            if where is None:
                raise DataError(f"image {key!r} has no patch labels in the SEA cache {self.folder} "
                                f"({len(self.index)} images); label this data set with `vlalign label-patches`",
                                reason="missing_labels", field="image")
            shard_indices, shard_scores = self._shard(where[0])
            indices.append(shard_indices[where[1]])
            scores.append(shard_scores[where[1]])
        return np.stack(indices).astype(np.int64), np.stack(scores).astype(np.float32)

    def iter_shards(self):
        """(indices, scores) per shard, whole arrays: for summaries over the full cache."""
        for shard in range(self.num_shards):
            yield self._shard(shard)
