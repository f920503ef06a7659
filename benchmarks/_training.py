"""Shared by the step-time benchmarks: objectives, dataset and one collated batch for a built model."""

from __future__ import annotations

import contextlib

from vlalign.data.build import build_dataset
from vlalign.data.dataset import Collator
from vlalign.data.llava_json import SkipReport
from vlalign.objectives import build_objectives, merged_sample_fields
from vlalign.train.loop import TrainingModule


class SingleProcess:
    """The part of an accelerate Accelerator that `Objective.prepare` uses, for one process."""

    is_main_process = True

    def main_process_first(self):
        return contextlib.nullcontext()


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
