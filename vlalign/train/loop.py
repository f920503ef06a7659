"""The training engine: one readable loop on accelerate for every stage and objective.

`train()` reads top to bottom: check the config, build the run (`Run`), train epoch by epoch, save.
The loop's position (step, epoch, batches done, skip and truncation counters) lives in one `TrainState`,
which checkpoints save and `--resume` restores.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader

from vlalign.config import RunConfig, dump_config
from vlalign.data.build import build_dataset
from vlalign.data.dataset import Collator, LengthGroupedBatchSampler
from vlalign.data.packing import packed_row_length
from vlalign.data.llava_json import SkipReport
from vlalign.distributed import gather_objects, quiesce
from vlalign.errors import ConfigError, DataError, TrainingError
from vlalign.models.vlm import VisionLanguageModel
from vlalign.objectives import build_objectives, merged_forward_request, merged_sample_fields
from vlalign.train import checkpoint as ckpt
from vlalign.train.guards import a_rank_has_nothing, say_if_the_launcher_was_not_followed, update_is_finite
from vlalign.train.resume import claim_folder, drop_metrics_after, restore, resume_candidates
from vlalign.train.checks import check_config, check_run_paths
from vlalign.train.fast_paths import store_frozen_linears_in
from vlalign.train.optim import build_optimizer, build_scheduler
from vlalign.train.resume_changes import config_changes
from vlalign.train.progress import StepLogger
from vlalign.train.stages import apply_tune, format_parameter_table, keep_frozen_in_eval, parameter_table
from vlalign.train.vision_features import attach_vision_features


class TrainingModule(nn.Module):
    """Model + objectives in one module, so DDP/FSDP also synchronise objective parameters (temperatures)."""

    def __init__(self, model: VisionLanguageModel, objectives: nn.ModuleDict):
        super().__init__()
        self.model = model
        self.objectives = objectives
        self.request = merged_forward_request(objectives)  # what the forward pass computes, merged once

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            keep_frozen_in_eval(self.model)
        return self

    def forward(self, batch):
        output = self.model(batch.input_ids, batch.attention_mask, batch.pixel_values, request=self.request,
                            position_ids=batch.position_ids, vision_features=batch.vision_features,
                            visual_keep=batch.visual_keep)
        total = torch.zeros((), dtype=torch.float32, device=batch.input_ids.device)
        losses, metrics = {}, {}
        for objective in self.objectives.values():
            terms = objective(output, batch, self.model)
            weights = objective.term_weights(objective.options)
            for name, value in terms.losses.items():
                total = total + weights[name] * value.float()
                losses[name] = value.detach()
            metrics.update(terms.metrics)
        return total, losses, metrics


@dataclass
class TrainState:
    """Where the loop is. `skips` and `truncated` are this rank's own counts of what it met while training."""

    step: int = 0
    epoch: int = 0
    batches_done: int = 0  # of the current epoch
    truncated: int = 0
    skips: SkipReport = field(default_factory=SkipReport)
    nonfinite_skipped: int = 0  # updates skipped under train.on_nonfinite=skip_batch (all ranks agree)
    nonfinite_in_a_row: int = 0
    config_changes: list = field(default_factory=list)  # settings changed by resumes: [{step, changes}]
    window_finite: object = True  # this rank's losses since the last update were all finite (a bool tensor)
    window_records: list = field(default_factory=list)  # record ids since the last update, for the error
    left_out_for_sync: int = 0  # this rank's records left out because another rank's micro-batch was all skipped

    def shared(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batches_done": self.batches_done,
                "nonfinite_skipped": self.nonfinite_skipped, "nonfinite_in_a_row": self.nonfinite_in_a_row,
                "config_changes": self.config_changes}

    def rank_state(self) -> dict:
        return {"skips": list(self.skips.entries.items()), "truncated": self.truncated,
                "left_out_for_sync": self.left_out_for_sync}

    def restore(self, shared: dict, rank_state: dict) -> None:
        self.step, self.epoch, self.batches_done = shared["step"], shared["epoch"], shared["batches_done"]
        self.nonfinite_skipped = shared.get("nonfinite_skipped", 0)  # absent in checkpoints of older versions
        self.nonfinite_in_a_row = shared.get("nonfinite_in_a_row", 0)
        self.config_changes = list(shared.get("config_changes", []))
        self.skips.merge(SkipReport(entries=dict(rank_state["skips"])))
        self.truncated = rank_state["truncated"]
        self.left_out_for_sync = rank_state.get("left_out_for_sync", 0)


@dataclass
class Run:
    """Everything one stage's loop works with."""

    config: RunConfig
    output_dir: Path
    accelerator: object
    module: nn.Module  # the prepared (possibly wrapped) TrainingModule
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: DataLoader
    sampler: LengthGroupedBatchSampler
    recipe: dict
    total_steps: int
    load_skips: SkipReport  # met while reading the data file: recounted identically by every start and rank
    run_id: str  # vlalign.train.run_folder: the checkpoints this run may resume or prune
    state: TrainState = field(default_factory=TrainState)
    logger: StepLogger | None = None
    step_hooks: tuple = ()


    @property
    def unwrapped(self) -> TrainingModule:
        return self.accelerator.unwrap_model(self.module)


# Called after optimizer steps with (live model in eval mode, config, step, total_steps); returns values to log
# (e.g. benchmark metrics: vlalign.eval.during_training). Layers above the loop plug in here.
StepHook = Callable[[VisionLanguageModel, RunConfig, int, int], dict]


def train(config: RunConfig, resume: bool | str | None = None, step_hooks: tuple[StepHook, ...] = (),
          overwrite: bool = False, allow_changes: bool = False) -> Path:
    """Runs one stage; returns the folder of its final checkpoint. `resume`: True (the folder's newest complete
    checkpoint) or a checkpoint folder; `allow_changes`: apply a changed learning-rate schedule on resume
    (vlalign.train.resume_changes). `overwrite`: start afresh in a folder that holds another run, whose files
    are moved aside (vlalign.train.run_folder)."""
    check_config(config)  # before any weights load
    check_run_paths(config)
    run = _start(config, resume, overwrite, allow_changes)
    run.step_hooks = tuple(step_hooks)
    try:
        while run.state.step < run.total_steps:
            _run_epoch(run)
    finally:
        run.logger.close()  # also on errors, so the bar and metrics.jsonl are closed
    return _finish(run)


def _start(config: RunConfig, resume, overwrite: bool, allow_changes: bool) -> Run:
    tc = config.train
    output_dir = Path(tc.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    accelerator = _make_accelerator(tc, output_dir)
    say_if_the_launcher_was_not_followed(accelerator)
    run_id = claim_folder(accelerator, output_dir, resume, overwrite)
    resume_from = resume_candidates(resume, output_dir, run_id)
    changes = config_changes(resume_from[0], config, allow_changes) if resume_from else []
    for line in changes:
        accelerator.print(f"[vlalign] --resume applies a changed setting: {line}")
    if resume_from and accelerator.distributed_type.value in ("DEEPSPEED", "FSDP"):
        raise ConfigError("--resume under DeepSpeed/FSDP is not supported yet (optimizer state is sharded); "
                          "resume with DDP or a single process")
    set_seed(tc.seed, device_specific=True)  # own dropout stream per rank; DDP syncs the init
    module, recipe = _build_model(config, accelerator)
    load_skips = SkipReport()
    loader, sampler = _build_loader(config, module.model, load_skips, accelerator)
    for objective in module.objectives.values():
        objective.prepare(module.model, loader.dataset, accelerator)
    _store_frozen_weights_in_compute_dtype(module.model, accelerator)
    optimizer = build_optimizer(module, tc)
    module, optimizer, loader = accelerator.prepare(module, optimizer, loader)
    total_steps = tc.max_steps or tc.epochs * max(1, math.ceil(len(loader) / tc.grad_accum))
    scheduler = build_scheduler(getattr(optimizer, "optimizer", optimizer), tc.warmup_ratio, total_steps)
    run = Run(config, output_dir, accelerator, module, optimizer, scheduler, loader, sampler, recipe, total_steps,
              load_skips, run_id)
    if resume_from:
        restore(run, resume_from)
        if changes:
            run.state.config_changes.append({"step": run.state.step, "changes": changes})
    if accelerator.is_main_process:
        drop_metrics_after(output_dir / "metrics.jsonl", run.state.step)  # a resumed run rewrites later rows
        dump_config(config, output_dir / "config.yaml")
    accelerator.init_trackers("tensorboard")
    run.logger = StepLogger(accelerator, output_dir, total_steps, run.state.step)
    module.train()
    return run


def _store_frozen_weights_in_compute_dtype(model, accelerator) -> None:
    """Under bf16/fp16 autocast with DDP or one process, frozen linear weights are kept in that dtype
    (vlalign.train.fast_paths: the same matmuls without a cast per step). FSDP and DeepSpeed manage
    parameter dtypes themselves (and want one dtype per flat parameter): left alone there."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision)
    if dtype is not None and accelerator.distributed_type.value not in ("DEEPSPEED", "FSDP"):
        store_frozen_linears_in(model, dtype)


def _run_epoch(run: Run) -> None:
    """The rest of the current epoch, or until the last step; then the next epoch starts."""
    state, accelerator = run.state, run.accelerator
    steps_before, batches_before = state.step, state.batches_done
    loader = accelerator.skip_first_batches(run.loader, state.batches_done) if state.batches_done else run.loader
    # accelerate's loaders re-apply their own epoch counter to the sampler on every __iter__; a resumed
    # run's fresh loader would count from 0, so set both explicitly.
    loader.set_epoch(state.epoch)
    run.sampler.set_epoch(state.epoch)
    run.loader.dataset.set_epoch(state.epoch)  # the visual-token drop draws per epoch
    for batch in loader:
        _train_batch(run, batch)
        if state.step >= run.total_steps:
            return
    if state.step == steps_before and state.batches_done > batches_before:
        raise DataError("a whole epoch gave no training step: every record was skipped",
                        reason="empty", file=run.config.data.train_file)
    state.epoch, state.batches_done = state.epoch + 1, 0


def _train_batch(run: Run, batch) -> None:
    state, accelerator, tc = run.state, run.accelerator, run.config.train
    state.batches_done += 1
    state.skips.merge(batch.skips)
    state.truncated += batch.truncated
    if a_rank_has_nothing(run, batch):
        return
    with accelerator.accumulate(run.module):
        total, losses, metrics = run.module(batch)
        accelerator.backward(total)
        finite = torch.isfinite(total.detach())  # judged at the update, on every rank (below)
        state.window_finite = finite & state.window_finite
        state.window_records += list(batch.record_ids)
        if accelerator.sync_gradients:
            # the norm is needed anyway for the guard; an infinite limit measures without clipping
            norm = accelerator.clip_grad_norm_(run.module.parameters(), tc.max_grad_norm or math.inf)
            if not update_is_finite(run, losses, norm):
                run.optimizer.zero_grad(set_to_none=True)
                return
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    if bool(finite):  # a non-finite micro-step's values never reach the logs (its update is refused above)
        run.logger.accumulate(total, losses, metrics, len(batch))
    if not accelerator.sync_gradients:
        return
    run.scheduler.step()
    state.step += 1
    run.logger.step_done(state.step, run.scheduler.get_last_lr()[0],
                         log=state.step % tc.log_every == 0 or state.step == run.total_steps)
    _run_step_hooks(run)
    if tc.save_every and state.step % tc.save_every == 0 and state.step < run.total_steps:
        _save(run, run.output_dir / f"checkpoint-{state.step:06d}", resumable=True)
        if accelerator.is_main_process:
            ckpt.prune_checkpoints(run.output_dir, tc.keep_checkpoints, run.run_id)
        ckpt.fault_point(f"after_step_{state.step}")


@contextlib.contextmanager
def _rng_untouched():
    """Whatever a hook draws, the training streams (torch CPU/CUDA, Python, NumPy) continue as without it."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _run_step_hooks(run: Run) -> None:
    if not run.step_hooks:
        return
    values = {}
    model = run.unwrapped.model
    # under the training autocast: frozen weights may be stored in its dtype (_store_frozen_weights_in_compute_dtype)
    with _rng_untouched(), torch.no_grad(), run.accelerator.autocast():
        model.eval()
        try:
            for hook in run.step_hooks:
                values.update(hook(model, run.config, run.state.step, run.total_steps) or {})
        finally:
            run.module.train()  # back to training mode, frozen parts kept in eval
    if values:
        run.logger.log_values(run.state.step, values)


def _save(run: Run, folder: Path, resumable: bool) -> Path:
    """A checkpoint, atomically (vlalign.train.checkpoint); a full disk or lost permission is one error naming
    the folder, and what was half written stays a hidden staging folder that nothing loads."""
    try:
        return _write_checkpoint(run, folder, resumable)
    except OSError as error:
        raise TrainingError(f"cannot write checkpoint {folder}: {error.strerror or error}"
                            f"{f' ({error.filename})' if error.filename else ''}; the earlier checkpoints in "
                            f"{folder.parent} are intact (resume from them with --resume)") from None


def _write_checkpoint(run: Run, folder: Path, resumable: bool) -> Path:
    state = {**run.state.shared(), "stage": run.config.train.stage, "recipe": run.recipe,
             "total_steps": run.total_steps, "run_id": run.run_id}
    extra = {"optimizer": run.optimizer, "scheduler": run.scheduler} if resumable else {}
    unwrapped = run.unwrapped
    return ckpt.save_checkpoint(folder, run.accelerator, model=unwrapped.model, objectives=unwrapped.objectives,
                                config=run.config, state=state, wrapped=run.module,
                                rank_state=run.state.rank_state(), **extra)


def _finish(run: Run) -> Path:
    final = _save(run, run.output_dir / "final", resumable=False)
    _report_data(run)
    # The last collectives are behind us: before this process may exit, let the process-group backend let go of
    # their tensors (vlalign.distributed explains the abort at interpreter exit this prevents).
    quiesce()
    run.accelerator.end_training()
    run.accelerator.print(f"[vlalign] stage {run.config.train.stage} done: {final}")
    return final


def _make_accelerator(tc, output_dir: Path):
    # accelerate keeps one process-wide state and refuses a second Accelerator with another precision:
    # each train() call (two stages in one process: the demo, notebooks, tests) starts from its own. The
    # distributed set-up (PartialState) is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    # cpu=True on machines without CUDA lets torchrun/accelerate launch run DDP over gloo (MULTI_CPU).
    return Accelerator(gradient_accumulation_steps=tc.grad_accum, mixed_precision=tc.mixed_precision,
                       log_with="tensorboard", project_dir=str(output_dir), cpu=not torch.cuda.is_available(),
                       # A text-only batch leaves the connector (and tower) without gradients on that
                       # rank; DDP must be told, or ranks disagree on which buckets to reduce.
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def _build_model(config: RunConfig, accelerator) -> tuple[TrainingModule, dict]:
    tc = config.train
    model = VisionLanguageModel.from_config(config.model)
    recipe = apply_tune(model, tc.stage, tc.tune)
    if tc.init_from:
        loaded = ckpt.load_weights(tc.init_from, model)
        accelerator.print(f"[vlalign] initialised {len(loaded)} tensors from {tc.init_from}")
    objectives = build_objectives(config.objectives, model)
    accelerator.print(f"[vlalign] stage {tc.stage}, recipe {recipe}, {model.num_visual_tokens} visual tokens/image")
    accelerator.print(format_parameter_table(parameter_table(model, {"objectives": objectives})))
    return TrainingModule(model, objectives), recipe


def _build_loader(config: RunConfig, model, skips: SkipReport, accelerator):
    tc = config.train
    dataset = build_dataset(config, model, skips, merged_sample_fields(config.objectives))
    if tc.visual_token_drop:
        dataset.token_drop = (tc.visual_token_drop, tc.seed)
    if config.data.cache_vision_features:
        attach_vision_features(model, dataset, config.data.vision_feature_cache, accelerator)
    sampler = LengthGroupedBatchSampler(dataset.estimated_lengths(), tc.batch_size, tc.seed,
                                        config.data.group_by_length)
    collator = Collator(model.tokenizer.pad_token_id, packing=config.data.packing,
                        pack_length=packed_row_length(config.model))
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collator,
                        num_workers=config.data.num_workers,
                        generator=torch.Generator().manual_seed(tc.seed))  # keeps global RNG untouched
    return loader, sampler


def _report_data(run: Run) -> None:
    """Skipped records (distinct, over all ranks) and truncations, printed and written to data_report.json."""
    total = SkipReport()
    total.merge(run.load_skips)
    all_truncated = left_out = 0
    for rank_skips, rank_truncated, rank_left_out in gather_objects(
            [(run.state.skips, run.state.truncated, run.state.left_out_for_sync)]):
        total.merge(rank_skips)
        all_truncated += rank_truncated
        left_out += rank_left_out
    nonfinite = run.state.nonfinite_skipped
    run.accelerator.print(f"[vlalign] {total.summary()}; {all_truncated} samples truncated"
                          + (f"; {left_out} samples left out so that the ranks stay in step (another rank's "
                             f"micro-batch was all skipped)" if left_out else "")
                          + (f"; {nonfinite} updates skipped for a non-finite loss or gradient" if nonfinite else ""))
    if run.accelerator.is_main_process:
        (run.output_dir / "data_report.json").write_text(json.dumps(
            {"skipped": dict(total.counts), "skip_examples": total.examples, "truncated": all_truncated,
             "left_out_for_sync": left_out, "nonfinite_updates_skipped": nonfinite}, indent=2))
