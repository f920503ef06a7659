"""The training loop: one readable loop on accelerate for every stage and objective."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from vlalign.config import RunConfig, dump_config
from vlalign.data.build import build_dataset
from vlalign.data.dataset import Collator, LengthGroupedBatchSampler
from vlalign.data.llava_json import SkipReport
from vlalign.distributed import gather_objects, mean_over_ranks, quiesce
from vlalign.errors import ConfigError, DataError
from vlalign.models.vlm import VisionLanguageModel
from vlalign.objectives import build_objectives
from vlalign.objectives.base import data_requirements
from vlalign.train import checkpoint as ckpt
from vlalign.train.optim import build_optimizer, build_scheduler
from vlalign.train.stages import apply_tune, format_parameter_table, keep_frozen_in_eval, parameter_table


class TrainingModule(nn.Module):
    """Model + objectives in one module, so DDP/FSDP also synchronise objective parameters (temperatures)."""

    def __init__(self, model: VisionLanguageModel, objectives: nn.ModuleDict):
        super().__init__()
        self.model = model
        self.objectives = objectives

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            keep_frozen_in_eval(self.model)
        return self

    def forward(self, batch):
        # Q-Former pre-training reads only the connector: no LLM pass unless some objective needs one.
        run_llm = any(objective.needs_llm for objective in self.objectives.values())
        output = self.model(batch.input_ids, batch.attention_mask, batch.pixel_values, run_llm=run_llm)
        total = torch.zeros((), dtype=torch.float32, device=batch.input_ids.device)
        losses, metrics = {}, {}
        for objective in self.objectives.values():
            terms = objective(output, batch)
            weights = objective.term_weights()
            for name, value in terms.losses.items():
                total = total + weights[name] * value.float()
                losses[name] = value.detach()
            metrics.update(terms.metrics)
        return total, losses, metrics


def _resume_folder(resume, output_dir: Path) -> Path | None:
    if not resume:
        return None
    folder = ckpt.latest_checkpoint(output_dir) if resume is True else Path(resume)
    if folder is None:
        print(f"[vlalign] --resume: no complete checkpoint in {output_dir}; starting from scratch")
        return None
    if not ckpt.is_complete(folder):
        raise ConfigError(f"--resume {folder}: not a complete checkpoint")
    return folder


def _make_accelerator(tc, output_dir: Path):
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState, GradientState

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


def _build_loader(config: RunConfig, model, objectives, skips: SkipReport):
    tc = config.train
    dataset = build_dataset(config, model, skips, data_requirements(objectives))
    sampler = LengthGroupedBatchSampler(dataset.estimated_lengths(), tc.batch_size, tc.seed,
                                        config.data.group_by_length)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=Collator(model.tokenizer.pad_token_id),
                        num_workers=config.data.num_workers,
                        generator=torch.Generator().manual_seed(tc.seed))  # keeps global RNG untouched
    return loader, sampler


def train(config: RunConfig, resume: bool | str | None = None) -> Path:
    """Runs one stage; returns the folder of its final checkpoint."""
    from accelerate.utils import set_seed

    tc = config.train
    output_dir = Path(tc.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    accelerator = _make_accelerator(tc, output_dir)
    resume_from = _resume_folder(resume, output_dir)
    if resume_from is not None and accelerator.distributed_type.value in ("DEEPSPEED", "FSDP"):
        raise ConfigError("--resume under DeepSpeed/FSDP is not supported yet (optimizer state is sharded); "
                          "resume with DDP or a single process")
    set_seed(tc.seed, device_specific=True)  # own dropout stream per rank; DDP syncs the init

    module, recipe = _build_model(config, accelerator)
    # Load-time skips are recounted identically by every start and every rank; item-time skips
    # (template, unreadable image) are met during training and travel in the checkpoints.
    load_skips, skips = SkipReport(), SkipReport()
    loader, sampler = _build_loader(config, module.model, module.objectives, load_skips)
    for objective in module.objectives.values():
        objective.prepare(module.model, loader.dataset, accelerator)
    optimizer = build_optimizer(module, tc)
    module, optimizer, loader = accelerator.prepare(module, optimizer, loader)
    unwrapped = accelerator.unwrap_model(module)
    steps_per_epoch = max(1, math.ceil(len(loader) / tc.grad_accum))
    total_steps = tc.max_steps or tc.epochs * steps_per_epoch
    scheduler = build_scheduler(getattr(optimizer, "optimizer", optimizer), tc, total_steps)

    step, epoch, batches_done, truncated = 0, 0, 0, 0
    if resume_from is not None:
        state, rank_state = ckpt.restore_training_state(resume_from, accelerator, optimizer, scheduler)
        ckpt.load_weights(resume_from, unwrapped.model, unwrapped.objectives)
        step, epoch, batches_done = state["step"], state["epoch"], state["batches_done"]
        skips.merge(SkipReport(entries=dict(rank_state["skips"])))
        truncated = rank_state["truncated"]
        accelerator.print(f"[vlalign] resumed from {resume_from} at step {step} (epoch {epoch}, "
                          f"batch {batches_done})")
    if accelerator.is_main_process:
        dump_config(config, output_dir / "config.yaml")
    accelerator.init_trackers("tensorboard")
    logger = StepLogger(accelerator, output_dir, total_steps, step, tc.batch_size * accelerator.num_processes)
    module.train()

    def save(folder: Path, resumable: bool) -> Path:
        state = {"step": step, "epoch": epoch, "batches_done": batches_done, "stage": tc.stage,
                 "recipe": recipe, "total_steps": total_steps}
        extra = {"optimizer": optimizer, "scheduler": scheduler} if resumable else {}
        return ckpt.save_checkpoint(folder, accelerator, model=unwrapped.model, objectives=unwrapped.objectives,
                                    config=config, state=state, wrapped=module,
                                    rank_state={"skips": list(skips.entries.items()), "truncated": truncated}, **extra)

    try:
        while step < total_steps:
            steps_before, batches_before = step, batches_done
            epoch_loader = accelerator.skip_first_batches(loader, batches_done) if batches_done else loader
            # accelerate's loaders re-apply their own epoch counter to the sampler on every __iter__; a resumed
            # run's fresh loader would count from 0, so set both explicitly.
            epoch_loader.set_epoch(epoch)
            sampler.set_epoch(epoch)
            for batch in epoch_loader:
                batches_done += 1
                skips.merge(batch.skips)
                truncated += batch.truncated
                if len(batch) == 0:
                    continue  # every record of this batch was skipped (and counted)
                with accelerator.accumulate(module):
                    total, losses, metrics = module(batch)
                    accelerator.backward(total)
                    if accelerator.sync_gradients and tc.max_grad_norm:
                        accelerator.clip_grad_norm_(module.parameters(), tc.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                logger.accumulate(total, losses, metrics, len(batch))
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                step += 1
                logger.step_done(step, scheduler.get_last_lr()[0], log=step % tc.log_every == 0 or step == total_steps)
                if tc.save_every and step % tc.save_every == 0 and step < total_steps:
                    save(output_dir / f"checkpoint-{step:06d}", resumable=True)
                    if accelerator.is_main_process:
                        ckpt.prune_checkpoints(output_dir, tc.keep_checkpoints)
                    ckpt.fault_point(f"after_step_{step}")
                if step >= total_steps:
                    break
            else:  # the epoch ran out
                if step == steps_before and batches_done > batches_before:
                    raise DataError("a whole epoch gave no training step: every record was skipped",
                                    reason="empty", file=config.data.train_file)
                epoch, batches_done = epoch + 1, 0
    finally:
        logger.close()  # also on errors, so the bar and metrics.jsonl are closed
    final = save(output_dir / "final", resumable=False)
    _report_data(accelerator, output_dir, load_skips, skips, truncated)
    # The last collectives are behind us: before this process may exit, let the process-group backend let go of
    # their tensors (vlalign.distributed explains the abort at interpreter exit this prevents).
    quiesce()
    accelerator.end_training()
    accelerator.print(f"[vlalign] stage {tc.stage} done: {final}")
    return final


def _report_data(accelerator, output_dir: Path, load_skips: SkipReport, skips: SkipReport,
                 truncated: int) -> None:
    """Skipped records (distinct, over all ranks) and truncations, printed and written to data_report.json."""
    total = SkipReport()
    total.merge(load_skips)
    all_truncated = 0
    for rank_skips, rank_truncated in gather_objects([(skips, truncated)]):
        total.merge(rank_skips)
        all_truncated += rank_truncated
    accelerator.print(f"[vlalign] {total.summary()}; {all_truncated} samples truncated")
    if accelerator.is_main_process:
        (output_dir / "data_report.json").write_text(json.dumps(
            {"skipped": dict(total.counts), "skip_examples": total.examples, "truncated": all_truncated}, indent=2))


class StepLogger:
    """Console progress bar + TensorBoard + metrics.jsonl, with loss terms averaged over each log window."""

    def __init__(self, accelerator, output_dir: Path, total_steps: int, start_step: int, global_batch: int):
        from tqdm.auto import tqdm

        self.accelerator = accelerator
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not accelerator.is_main_process,
                        desc="train", dynamic_ncols=True)
        self.metrics_file = (output_dir / "metrics.jsonl").open("a") if accelerator.is_main_process else None
        self.sums: dict[str, float] = {}
        self.count = 0
        self.samples = 0
        self.window_start = time.perf_counter()

    def accumulate(self, total, losses, metrics, batch_size: int) -> None:
        values = {"loss": total.detach(), **losses}
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
        self.count += 1
        self.samples += batch_size

    def step_done(self, step: int, lr: float, log: bool) -> None:
        self.bar.update(1)
        if not log or not self.count:
            return
        averages = {name: total / self.count for name, total in self.sums.items()}
        # One collective per log window, not per step.
        averages = dict(zip(averages, mean_over_ranks(list(averages.values()), self.accelerator.device)))
        elapsed = time.perf_counter() - self.window_start
        averages["samples_per_s"] = self.samples * self.accelerator.num_processes / max(elapsed, 1e-9)
        averages["lr"] = lr
        self.accelerator.log(averages, step=step)
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in averages.items() if k != "lr"})
        if self.metrics_file is not None:
            self.metrics_file.write(json.dumps({"step": step, **averages}) + "\n")
            self.metrics_file.flush()
        self.sums, self.count, self.samples = {}, 0, 0
        self.window_start = time.perf_counter()

    def close(self) -> None:
        self.bar.close()
        if self.metrics_file is not None:
            self.metrics_file.close()
