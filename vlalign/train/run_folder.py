"""A run folder belongs to one run: which run made it, and what a new start may do with another run's files.

Without this, a second run into a used `train.output_dir` lost data: pruning keeps the highest step numbers, so an
older run's checkpoints outlived the new run's, and `--resume` then picked the older run's weights. Now:
- a fresh start records a run id in `run.json`, and every checkpoint it writes carries that id;
- a fresh start into a folder that holds checkpoints is refused, unless `--overwrite`, which moves every file of
  the old run into `replaced-<time>/` beside them (nothing is deleted);
- `--resume` continues the folder's own run, and only that run's checkpoints are resumed or pruned.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from vlalign.errors import ConfigError

RUN_FILE = "run.json"
REPLACED_PREFIX = "replaced-"
# What one run writes into its folder (checkpoints are matched by name below); anything else is left alone.
RUN_FILES = ("run.json", "config.yaml", "metrics.jsonl", "data_report.json", "final", "eval", "tensorboard")


def run_id_of(checkpoint: Path) -> str | None:
    """The run id a checkpoint's trainer_state.json records (None: written before run ids existed, or unreadable:
    resume reports that when it tries the folder)."""
    try:
        return json.loads((checkpoint / "trainer_state.json").read_text()).get("run_id")
    except (OSError, ValueError):
        return None


def folder_run_id(output_dir: Path) -> str | None:
    path = Path(output_dir) / RUN_FILE
    try:
        return json.loads(path.read_text())["run_id"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{path} is unreadable ({exc}); move it away or start the run in another folder") from None


def _checkpoints(output_dir: Path) -> list[Path]:
    return sorted(p for p in output_dir.glob("checkpoint-*") if p.is_dir())


def _old_run_files(output_dir: Path) -> list[Path]:
    names = set(RUN_FILES)
    return _checkpoints(output_dir) + sorted(p for p in output_dir.iterdir()
                                             if p.name in names or p.name.startswith("events.out.tfevents"))


def claim(output_dir: Path, resume: bool, overwrite: bool) -> tuple[str, list[Path]]:
    """Main process only, before any weights load. Returns (this run's id, what was moved aside).

    resume: the folder's own run id (one is given to a folder whose checkpoints predate run ids). Otherwise a new
    id; a folder holding checkpoints or a final model is refused without `overwrite`."""
    output_dir = Path(output_dir)
    if resume:
        run_id = folder_run_id(output_dir)
        if run_id is None:
            run_id = _new_id()
            _write(output_dir, run_id)
        return run_id, []
    occupied = _checkpoints(output_dir) + ([output_dir / "final"] if (output_dir / "final").exists() else [])
    if occupied and not overwrite:
        names = ", ".join(p.name for p in occupied[:4]) + (", ..." if len(occupied) > 4 else "")
        raise ConfigError(f"train.output_dir {output_dir} holds another run ({names}): continue it with --resume, "
                          f"choose another train.output_dir, or pass --overwrite to move its files aside")
    moved = []
    leftovers = _old_run_files(output_dir)
    if leftovers:  # --overwrite, or what a run left before its first checkpoint: moved, never deleted
        aside = output_dir / f"{REPLACED_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
        aside.mkdir()
        for path in leftovers:
            moved.append(path.rename(aside / path.name))
    run_id = _new_id()
    _write(output_dir, run_id)
    return run_id, moved


def _new_id() -> str:
    return uuid.uuid4().hex[:12]


def _write(output_dir: Path, run_id: str) -> None:
    (output_dir / RUN_FILE).write_text(json.dumps({"run_id": run_id, "created": time.strftime("%Y-%m-%d %H:%M:%S")}))
