"""Rows of a benchmark as the `datasets` library saves them (lmms-lab publishes every benchmark this way),
and the images inside them.

Accepted: a `save_to_disk` folder (`dataset_info.json` + `state.json` + `*.arrow`), a `DatasetDict` folder
(`dataset_dict.json` + one such folder per split), a `.parquet` file, or a folder of parquet files (a hub
snapshot: `data/test-00000-of-00002.parquet`, ...). Images are what `datasets.Image` stores: a struct
`{"bytes": ..., "path": ...}`; a row may also hold raw bytes or a base64 string (MMBench's TSV).
pyarrow reads all of them; `datasets` itself is not needed.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

from PIL import Image

from vlalign.data.image_files import decode_image_bytes, load_image
from vlalign.errors import DataError

# ImageRef: what a benchmark record's "image" holds: a file path, the encoded bytes, or None (no image).
ImageRef = str | bytes | None
SPLIT_PREFERENCE = ("test", "testdev", "validation", "val", "dev", "train")


def _pyarrow():
    try:
        import pyarrow  # noqa: F401  (optional: only benchmark files in the `datasets` formats need it)
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError as exc:
        raise DataError("reading a `datasets` / parquet benchmark needs pyarrow: pip install pyarrow",
                        reason="missing_pyarrow") from exc
    return pyarrow


def is_table(path: Path) -> bool:
    """Whether `path` is one of the `datasets` forms above (and not a benchmark's own json/tsv files)."""
    path = Path(path)
    if path.is_file():
        return path.suffix == ".parquet"
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
                              or any(path.rglob("*.parquet")))


def _choose_split(names: list[str], split: str | None, where: Path) -> str:
    if split is not None:
        if split not in names:
            raise DataError(f"no split {split!r}; it has {', '.join(names)}", reason="bad_split", file=str(where))
        return split
    if len(names) == 1:
        return names[0]
    for name in SPLIT_PREFERENCE:
        if name in names:
            return name
    raise DataError(f"several splits ({', '.join(names)}); choose one with --split", reason="bad_split",
                    file=str(where))


def _arrow_rows(folder: Path) -> list[dict]:
    pa = _pyarrow()
    state = json.loads((folder / "state.json").read_text())
    rows = []
    for entry in state["_data_files"]:
        with pa.memory_map(str(folder / entry["filename"])) as source:
            rows.extend(pa.ipc.open_stream(source).read_all().to_pylist())
    return rows


def _parquet_rows(files: list[Path]) -> list[dict]:
    pa = _pyarrow()
    rows = []
    for file in files:
        rows.extend(pa.parquet.read_table(file).to_pylist())
    return rows


def _parquet_split(path: Path, split: str | None) -> list[Path]:
    """A hub snapshot names its files `<split>-00000-of-0000N.parquet` (or keeps them in a `<split>/` folder)."""
    files = sorted(path.rglob("*.parquet"))
    by_split: dict[str, list[Path]] = {}
    for file in files:
        name = file.stem.split("-")[0] if "-" in file.stem else file.parent.name
        by_split.setdefault(name, []).append(file)
    if len(by_split) == 1 and split is None:
        return files
    return by_split[_choose_split(sorted(by_split), split, path)]


def read_rows(path: str | Path, split: str | None = None) -> list[dict]:
    """Every row of the chosen split, as plain dicts (images as `{"bytes", "path"}` structs)."""
    path = Path(path)
    if not path.exists():
        raise DataError("no such file or folder", reason="missing_file", file=str(path))
    if path.is_file():
        return _parquet_rows([path])
    if (path / "dataset_dict.json").is_file():
        names = json.loads((path / "dataset_dict.json").read_text())["splits"]
        return _arrow_rows(path / _choose_split(names, split, path))
    if (path / "state.json").is_file():
        return _arrow_rows(path)
    return _parquet_rows(_parquet_split(path, split))


def image_ref(cell, *, row_id: str, field: str = "image") -> ImageRef:
    """A row's image cell as an ImageRef: a `datasets.Image` struct, raw bytes, a path, or None."""
    if cell is None:
        return None
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return bytes(cell["bytes"])
        if cell.get("path"):
            return str(cell["path"])
        return None
    if isinstance(cell, (bytes, bytearray)):
        return bytes(cell)
    if isinstance(cell, str):
        return cell
    raise DataError(f"cannot read an image from a {type(cell).__name__}", reason="bad_image", record_id=row_id,
                    field=field)


def decode_base64_image(text: str, *, row_id: str, field: str = "image") -> bytes:
    """MMBench's TSV keeps each image as base64 text."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DataError(f"not base64 image data: {exc}", reason="bad_image", record_id=row_id,
                        field=field) from exc


def open_image(ref: ImageRef, image_root: str | Path | None = None) -> Image.Image:
    """The RGB image an ImageRef names: bytes are decoded; a relative path is taken under `image_root`."""
    if isinstance(ref, bytes):
        return decode_image_bytes(ref)
    path = Path(ref)
    if not path.is_absolute() and image_root is not None:
        path = Path(image_root) / path
    return load_image(path)
