"""What the export formats share: the one-line refusal that names the part, says why and where to go instead."""

from __future__ import annotations

import json
from pathlib import Path

from vlalign.errors import ConfigError

REMOTE_CODE_HINT = "export it with --format remote-code instead"


def llava_refusal(part: str, why: str) -> ConfigError:
    """`--format llava cannot hold <part>: <why>; export it with --format remote-code instead`."""
    return ConfigError(f"--format llava cannot hold {part}: {why}; {REMOTE_CODE_HINT}")


def folder_size(folder: Path) -> tuple[int, int]:
    """(bytes, files) under `folder`."""
    files = [path for path in Path(folder).rglob("*") if path.is_file()]
    return sum(path.stat().st_size for path in files), len(files)


def check_out_folder(out: Path, checkpoint: Path, model_type: str) -> None:
    """The export replaces `out` in one rename (vlalign.files), so `out` must not be a folder that holds anything else:
    it is new, empty, or an earlier export of the same format (its config.json names `model_type`)."""
    out, checkpoint = Path(out).resolve(), Path(checkpoint).resolve()
    if out == checkpoint or out in checkpoint.parents:
        raise ConfigError(f"--out {out} holds the checkpoint {checkpoint}; give another folder")
    if not out.exists() or not any(out.iterdir()):
        return
    config_file = out / "config.json"
    try:
        earlier = json.loads(config_file.read_text()).get("model_type") if config_file.is_file() else None
    except (OSError, ValueError):
        earlier = None
    if earlier != model_type:
        raise ConfigError(f"--out {out} exists and is not an earlier {model_type} export; the export replaces the "
                          f"whole folder, so give a new or empty one")
