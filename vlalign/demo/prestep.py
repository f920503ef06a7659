"""The recipes' pre-steps. Each takes the run's config patches and returns them updated, plus what the
report should show of it."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from vlalign.demo import query
from vlalign.demo.presets import ALIGN_LR, Preset
from vlalign.demo.recipes import PRE_STEPS
from vlalign.demo.steps import demo_mae, patch_labels


@dataclass(frozen=True)
class RunPatches:
    """Config patches (nested dicts, vlalign.config.apply_patch) a run's stages are built from."""

    objectives: dict  # the run's alignment objectives: stage 1's, or the query-former pre-training's
    common: dict  # every stage of the run: data root, precision, the connector
    stage1: dict = field(default_factory=dict)  # stage 1 only, applied after `objectives` (query runs)


@dataclass(frozen=True)
class DemoContext:
    world: Path  # the shapes world
    out: Path  # the demo folder (shared artefacts: dual encoder, labels, MAE)
    run_dir: Path  # this run's folder
    preset: Preset
    seed: int
    image_aspect: str  # the VLM's model.image_aspect (SEA labels must be made with the same)


def label_patches_step(ctx: DemoContext, patches: RunPatches) -> tuple[RunPatches, dict]:
    """SEA: label the world's training images with the demo dual encoder; the labels go into `sea`'s options."""
    folder, summary = patch_labels(ctx.world, ctx.out, ctx.image_aspect, ctx.preset.sea_words)
    objectives = copy.deepcopy(patches.objectives)
    objectives["sea"]["labels"] = str(folder)
    return replace(patches, objectives=objectives), {"sea_labels": summary}


def demo_mae_step(ctx: DemoContext, patches: RunPatches) -> tuple[RunPatches, dict]:
    """X-Former: pre-train the demo MAE on the world's images; its folder becomes the connector's `mae`."""
    folder, summary = demo_mae(ctx.world, ctx.out, ctx.preset.mae_epochs, ctx.seed)
    common = copy.deepcopy(patches.common)
    common["model"]["connector_options"]["mae"] = str(folder)
    return replace(patches, common=common), {"mae": summary}


def query_pretrain_step(ctx: DemoContext, patches: RunPatches) -> tuple[RunPatches, dict]:
    """Q-Former / X-Former pre-training; stage 1 then becomes the paper's LLM alignment from it."""
    pretrained, report = query.pretrain_query_former(patches.objectives, ctx.world, ctx.run_dir, patches.common,
                                                     ctx.preset.query_pretrain_epochs, ctx.preset.alignment_pairs)
    stage1 = {"objectives": {"generative": {"weight": 1.0}},
              "train": {"init_from": str(pretrained), "lr": ALIGN_LR}}
    return replace(patches, stage1=stage1), report


PRE_STEP_FUNCTIONS: dict[str, Callable[[DemoContext, RunPatches], tuple[RunPatches, dict]]] = {
    "label_patches": label_patches_step, "demo_mae": demo_mae_step, "query_pretrain": query_pretrain_step}
assert tuple(PRE_STEP_FUNCTIONS) == PRE_STEPS, "every named pre-step has exactly one implementation"
