"""Atomic writes: a reader (or a resumed run) sees the old file or folder or the new one, never half of it.

The one helper every checkpoint and cache uses. Files are written to a hidden sibling and renamed into
place; folders are filled in a hidden sibling folder that then replaces the target in one rename.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import BinaryIO, Callable


def staging_folder(target: Path) -> Path:
    """The hidden sibling a folder is built in. No process id in it: every rank of a distributed run
    writes into the same staging folder."""
    return target.with_name(f".{target.name}.tmp")


def publish_folder(staging: Path, target: Path) -> Path:
    """Replace `target` by the finished `staging` folder."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return target


def write_folder_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """`write(staging)` fills a hidden sibling folder, which then replaces `target` in one rename."""
    target = Path(target)
    staging = staging_folder(target)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write(staging)
    return publish_folder(staging, target)


def write_file_atomically(path: Path, content: bytes | str | Callable[[BinaryIO], None]) -> Path:
    """Write `content` (bytes, text, or a function that writes to a binary handle, e.g. numpy.save) to a
    hidden sibling of its own per process, so concurrent writers never share one, then rename it over `path`."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with staging.open("wb") as handle:
        if callable(content):
            content(handle)
        else:
            handle.write(content.encode("utf-8") if isinstance(content, str) else content)
    os.replace(staging, path)
    return path


def write_folder_once(target: Path, write: Callable[[Path], None]) -> Path:
    """As write_folder_atomically, for a cache that several processes may build at once: each fills its own
    staging folder; the first rename wins and a later finisher discards its copy (theirs is complete)."""
    target = Path(target)
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write(staging)
    try:
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target
