"""A frozen vision tower's output per image, stored once and read back by later epochs, stages and runs.

Layout of one store (one folder per tower + image transform, vlalign.train.vision_features names it):
  shard-00000.npy   [n, tokens, C] float16 memory map, one row per image
  shard-00000.json  {"rows": {content digest: row}} written last, atomically: a shard without its index is an
                    interrupted write and is never read (the next build rewrites it)
  file_digests.json {absolute path: [size, mtime_ns, sha256]}: images are keyed by their bytes, and a file whose
                    size and modification time did not change is not read and hashed again

Keys are content digests, so the same picture under two paths is stored once, and a changed file at the same
path is a new key (its stale row is never read).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from vlalign.files import write_file_atomically

DIGESTS_FILE = "file_digests.json"


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FeatureStore:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._rows: dict[str, tuple[int, int]] = {}  # digest -> (shard, row)
        self._shards: dict[int, np.ndarray] = {}
        self.reload()

    def reload(self) -> None:
        self._rows, self._shards = {}, {}
        for index_file in sorted(self.folder.glob("shard-*.json")):
            shard = int(index_file.stem.split("-")[1])
            for digest, row in json.loads(index_file.read_text())["rows"].items():
                self._rows[digest] = (shard, row)

    def __contains__(self, digest: str) -> bool:
        return digest in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def read(self, digest: str) -> np.ndarray:
        """[tokens, C] float16 (a copy: the memory map stays read-only)."""
        shard, row = self._rows[digest]
        if shard not in self._shards:
            self._shards[shard] = np.load(self.folder / f"shard-{shard:05d}.npy", mmap_mode="r")
        return np.array(self._shards[shard][row])

    def digests(self, paths: list[Path]) -> list[str]:
        """Content digest of each file, hashing only files that are new or changed since the last call."""
        memo_file = self.folder / DIGESTS_FILE
        memo = json.loads(memo_file.read_text()) if memo_file.is_file() else {}
        out, changed = [], False
        for path in paths:
            key = str(Path(path).resolve())
            stat = Path(path).stat()
            known = memo.get(key)
            if known is None or known[:2] != [stat.st_size, stat.st_mtime_ns]:
                memo[key] = [stat.st_size, stat.st_mtime_ns, sha256_of_file(Path(path))]
                changed = True
            out.append(memo[key][2])
        if changed:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_file_atomically(memo_file, json.dumps(memo))
        return out

    def write_shard(self, digests: list[str], compute_rows, batch_size: int, progress=None) -> int:
        """Store the rows of `digests` (not yet in the store). `compute_rows(start, stop)` -> (float32 [m, tokens,
        C], the m digests of digests[start:stop] it could compute). Rows that are not finite in float16 are an
        error and nothing is indexed. Returns the number of rows stored."""
        if not digests:
            return 0
        self.folder.mkdir(parents=True, exist_ok=True)
        shard = max((s for s, _ in self._rows.values()), default=-1) + 1
        while (self.folder / f"shard-{shard:05d}.json").exists():
            shard += 1
        array, index = None, {}
        for start in range(0, len(digests), batch_size):
            stop = min(start + batch_size, len(digests))
            rows, done = compute_rows(start, stop)
            if progress is not None:
                progress(stop - start)
            if not done:
                continue
            rows = np.asarray(rows, dtype=np.float32)
            with np.errstate(over="ignore"):  # checked just below, with a message naming the image
                stored = rows.astype(np.float16)
            if not np.isfinite(stored).all():
                bad = done[int(np.argwhere(~np.isfinite(stored))[0][0])]
                peak = float(np.abs(rows[np.isfinite(rows)]).max()) if np.isfinite(rows).any() else float("nan")
                raise ValueError(f"vision features of the image with content digest {bad[:12]} are not finite in "
                                 f"float16 (largest finite magnitude {peak:.3g}); unset data.cache_vision_features "
                                 f"for this tower")
            if array is None:  # sized for every digest; rows of images that did not decode stay unused
                array = np.lib.format.open_memmap(self.folder / f"shard-{shard:05d}.npy", mode="w+",
                                                  dtype=np.float16, shape=(len(digests), *stored.shape[1:]))
            array[len(index):len(index) + len(done)] = stored
            index.update({digest: len(index) + i for i, digest in enumerate(done)})
        if array is None:
            return 0
        array.flush()
        del array
        write_file_atomically(self.folder / f"shard-{shard:05d}.json", json.dumps({"rows": index}))
        self.reload()
        return len(index)


class VisionFeatureSource:
    """What a dataset reads instead of decoding images: each image path's cached row, by its content digest.
    Picklable for DataLoader workers (the memory maps are reopened in each worker)."""

    def __init__(self, folder: Path, digests: dict[str, str]):
        self.folder = Path(folder)
        self.digests = digests  # str(image path) -> content digest
        self._store: FeatureStore | None = None

    def __getstate__(self):
        return {"folder": self.folder, "digests": self.digests, "_store": None}

    def read(self, path: Path) -> np.ndarray | None:
        """The image's [tokens, C] float16 features; None when the build could not compute them (its file would
        not decode: the dataset then reads it to report that error)."""
        if self._store is None:
            self._store = FeatureStore(self.folder)
        digest = self.digests.get(str(path))
        return self._store.read(digest) if digest is not None and digest in self._store else None
