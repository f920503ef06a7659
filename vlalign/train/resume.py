"""Resuming a stage: which folder is this run's, which checkpoint to continue from, and restoring it.

The loop calls these with its `Run`; they touch only the run's accelerator, optimizer, scheduler, state and
folders. The rules themselves live in vlalign.train.run_folder (one run per folder) and
vlalign.train.resume_changes (what a resumed config may change).
"""

from __future__ import annotations

import json
from pathlib import Path

from vlalign.distributed import gather_objects
from vlalign.errors import ConfigError
from vlalign.files import write_file_atomically
from vlalign.train import checkpoint as ckpt
from vlalign.train import run_folder
from vlalign.train.optim import hyperparameters, reapply_hyperparameters


def claim_folder(accelerator, output_dir: Path, resume, overwrite: bool) -> str:
    """The main process claims the folder (run_folder.claim); every rank gets the run id or the same error."""
    outcome = None
    if accelerator.is_main_process:
        try:
            run_id, moved = run_folder.claim(output_dir, bool(resume), overwrite)
            outcome = ("ok", run_id)
            if moved:
                print(f"[vlalign] moved the earlier run's {len(moved)} files and folders aside into "
                      f"{moved[0].parent}")
        except ConfigError as error:
            outcome = ("error", str(error))
    kind, value = next(found for found in gather_objects([outcome]) if found is not None)
    if kind == "error":
        raise ConfigError(value)
    return value


def drop_metrics_after(path: Path, step: int) -> None:
    """metrics.jsonl keeps the rows up to `step` (a resumed run logs the later steps again); a torn last line
    from a kill is dropped too."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:
            continue
    write_file_atomically(path, "".join(line + "\n" for line in kept))


def restore(run, candidates: list[Path]) -> None:
    """From the newest candidate that loads on every rank; a corrupt one is named and the previous one tried."""
    configured = hyperparameters(run.optimizer)
    for index, folder in enumerate(candidates):
        problem = None
        try:
            shared, rank_state = ckpt.restore_training_state(folder, run.accelerator, run.optimizer, run.scheduler)
            ckpt.load_weights(folder, run.unwrapped.model, run.unwrapped.objectives)
        except ConfigError:
            raise
        except Exception as error:  # noqa: BLE001 - any unreadable file: name it, fall back
            problem = f"{type(error).__name__}: {str(error)[:200]}"
        problems = [found for found in gather_objects([problem]) if found]  # every rank falls back together
        if not problems:
            break
        if index == len(candidates) - 1:
            raise ConfigError(f"--resume: no checkpoint in {run.output_dir} loads; the last one tried, {folder}, "
                              f"fails with {problems[0]}")
        run.accelerator.print(f"[vlalign] warning: checkpoint {folder} is unreadable ({problems[0]}); "
                              f"trying the previous one, {candidates[index + 1].name}")
    run.state.restore(shared, rank_state)
    reapply_hyperparameters(run.optimizer, run.scheduler, configured)
    state = run.state
    run.accelerator.print(f"[vlalign] resumed from {folder} at step {state.step} (epoch {state.epoch}, "
                          f"batch {state.batches_done})")


def resume_candidates(resume, output_dir: Path, run_id: str) -> list[Path]:
    """Checkpoints to resume from, newest first (the older ones are the fallback if the newest is corrupt)."""
    if not resume:
        return []
    if resume is not True:
        folder = Path(resume)
        if not ckpt.is_complete(folder):
            raise ConfigError(f"--resume {folder}: not a complete checkpoint")
        return [folder]
    found = ckpt.complete_checkpoints(output_dir, run_id)[::-1]
    if found:
        return found
    if ckpt.is_complete(output_dir / "final"):
        raise ConfigError(f"--resume: the run in {output_dir} has finished (final/ is written) and keeps no "
                          f"resumable checkpoint; to train further, start a new run with "
                          f"train.init_from={output_dir / 'final'}")
    print(f"[vlalign] --resume: no complete checkpoint in {output_dir}; starting from scratch")
    return []
