"""Guards of the training step: every rank agrees before an update is made or a micro-step left out.

The loop calls these with its `Run` (accelerator, config, state, logger).
"""

from __future__ import annotations

import os

import torch

from vlalign.distributed import gather_objects, mean_over_ranks
from vlalign.errors import TrainingError


def say_if_the_launcher_was_not_followed(accelerator) -> None:
    """`accelerate launch` with an FSDP or DeepSpeed config on a machine without GPUs runs plain DDP over gloo
    (accelerate 1.x enables FSDP only for GPU-type process groups, DeepSpeed only without cpu=True): same
    weights, but none of the sharding that was asked for. Say so instead of letting it pass unnoticed."""
    wanted = [name for name, variable in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
              if os.environ.get(variable, "false").lower() == "true"]
    running = accelerator.distributed_type.value
    if wanted and running not in ("FSDP", "DEEPSPEED"):
        accelerator.print(f"[vlalign] warning: the launcher asked for {' and '.join(wanted)}, but accelerate runs "
                          f"{running} here (no GPU): parameters and optimizer state are replicated, not sharded")


def a_rank_has_nothing(run, batch) -> bool:
    """Whether this micro-step is left out: here, when every record of this batch was skipped (and counted); under
    several processes, when that happened on any rank. All ranks must leave it out together: a rank that returned
    alone would miss the gradient all-reduce the others wait in (a hang), or pair its next batch's collectives with
    their current ones. The records the other ranks leave out are counted (`left_out_for_sync`)."""
    empty_here = len(batch) == 0
    if run.accelerator.num_processes == 1:
        return empty_here
    if mean_over_ranks([float(empty_here)], run.accelerator.device)[0] == 0.0:
        return False
    run.state.left_out_for_sync += len(batch)
    return True


def update_is_finite(run, losses: dict, norm) -> bool:
    """The non-finite guard, before an update: every loss since the last update and the gradient norm finite on
    every rank (all ranks agree, one collective). Otherwise stop with the step, records and terms, or (skip_batch)
    skip this update, count it, and stop after `max_nonfinite_in_a_row` skips in a row."""
    state, tc, accelerator = run.state, run.config.train, run.accelerator
    # Under fp16 the GradScaler skips steps with overflowing gradients by design; only the loss is judged there.
    # DeepSpeed clips inside its engine and may report no norm.
    norm_ok = tc.mixed_precision == "fp16" or norm is None or bool(torch.isfinite(torch.as_tensor(norm)))
    local_ok = bool(state.window_finite) and norm_ok
    everywhere_ok = mean_over_ranks([float(local_ok)], accelerator.device)[0] == 1.0
    records, state.window_finite, state.window_records = state.window_records, True, []
    if everywhere_ok:
        state.nonfinite_in_a_row = 0
        return True
    mine = None if local_ok else (records, {name: float(value) for name, value in losses.items()},
                                  None if norm is None else float(norm))
    rank, (bad_records, terms, bad_norm) = next((rank, found) for rank, found in enumerate(gather_objects([mine]))
                                                if found)
    what = (f"non-finite loss or gradient before update {state.step + 1} (rank {rank}: loss terms "
            f"{terms}, gradient norm {bad_norm}; records {bad_records})")
    if tc.on_nonfinite == "stop":
        raise TrainingError(f"{what}; nothing was updated. Lower train.lr, check those records, or set "
                            f"train.on_nonfinite=skip_batch")
    state.nonfinite_skipped += 1
    state.nonfinite_in_a_row += 1
    if state.nonfinite_in_a_row >= tc.max_nonfinite_in_a_row:
        raise TrainingError(f"{what}; {state.nonfinite_in_a_row} updates in a row were non-finite "
                            f"(train.max_nonfinite_in_a_row), stopping")
    if accelerator.is_main_process:
        run.logger.bar.write(f"[vlalign] skipped: {what} ({state.nonfinite_skipped} skipped so far)")
    return False
