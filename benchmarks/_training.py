"""Shared by the step-time benchmarks: objectives, dataset and one collated batch for a built model."""

from __future__ import annotations

import contextlib

import torch

from vlalign.config import load_config
from vlalign.data.build import build_dataset
from vlalign.data.dataset import Collator
from vlalign.data.llava_json import SkipReport
from vlalign.objectives import build_objectives, merged_sample_fields
from vlalign.models.vlm import VisionLanguageModel
from vlalign.train.loop import TrainingModule
from vlalign.train.stages import apply_tune
from vlalign.train.vision_features import attach_vision_features

BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()  # the demo trains under bf16 autocast where native


class SingleProcess:
    """The part of an accelerate Accelerator that `Objective.prepare` and the feature cache use, for one process."""

    is_main_process = True
    device = torch.device("cpu")
    mixed_precision = "bf16" if BF16 else "no"

    def main_process_first(self):
        return contextlib.nullcontext()

    def print(self, *args):
        pass

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if BF16 else contextlib.nullcontext()


def demo_training(stage: int, world, overrides=()):
    """(config, TrainingModule in train mode, dataset) of the demo's stage from configs/quickstart-stage*.yaml on
    `world`, with `overrides`; the tower's features attached when the config caches them."""
    from _env import REPO

    config = load_config(REPO / "configs" / f"quickstart-stage{stage}.yaml",
                         [f"data.train_file={world / f'stage{stage}.json'}", f"data.image_root={world}",
                          "train.init_from=null", *overrides])
    torch.manual_seed(0)
    model = VisionLanguageModel.from_config(config.model)
    apply_tune(model, stage, config.train.tune)
    module = TrainingModule(model, build_objectives(config.objectives, model))
    module.train()
    dataset = build_dataset(config, model, SkipReport())
    if config.data.cache_vision_features:
        attach_vision_features(model, dataset, config.data.vision_feature_cache, SingleProcess())
    return config, module, dataset


def training_setup(model, config, objectives: dict, batch_size: int):
    """(TrainingModule in train mode, the dataset's first `batch_size` samples collated)."""
    built = build_objectives(objectives, model)
    dataset = build_dataset(config, model, SkipReport(), merged_sample_fields(objectives))
    for objective in built.values():
        objective.prepare(model, dataset, SingleProcess())
    batch = Collator(model.tokenizer.pad_token_id)([dataset[i] for i in range(batch_size)])
    module = TrainingModule(model, built)
    module.train()
    return module, batch
