"""Benchmark: the demo's training step with this issue's throughput settings vs without them, interleaved.

Both set-ups train the demo's models (packaged EfficientNet-Lite0 stage 3 + SmolLM2-135M, batch 8, bf16 autocast
where native) from `configs/quickstart-stage*.yaml` on the demo world, in one process, on the same batches of
vlalign's length-grouped sampler. A step = data loading (dataset items + collation) + forward + backward +
AdamW update. Variants:

  before        padded length-grouped batches, transformers' sdpa, the tower run on decoded pixels every step,
                frozen weights in float32 (cast by autocast at every matmul), LoRA dropout by bernoulli_
  after         the configs as they are: packed rows with per-sample attention (sdpa_varlen), cached tower
                features, frozen linear weights in bf16, LoRA dropout by rand_like
  after+drop    `after` with train.visual_token_drop 0.5 (stage 1 only)

The machine's speed drifts by 10-20% over minutes (shared hosts), so only ratios measured like this, steps of
each variant alternating on the same batches, are comparable; sequential demo runs are not.

    python benchmarks/demo_step.py [--stages 1,2] [--batches 8]

The last line of stdout is a JSON object: per stage the seconds per step of each variant and
`after_over_before` (< 1: faster), `drop_over_after`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _env import REPO  # offline env + repo on sys.path, before torch and vlalign
from _training import BF16, SingleProcess, demo_training  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from vlalign.data.dataset import Collator, LengthGroupedBatchSampler  # noqa: E402
from vlalign.data.packing import packed_row_length  # noqa: E402
from vlalign.train.fast_paths import RandDropout, store_frozen_linears_in  # noqa: E402
from vlalign.train.optim import build_optimizer  # noqa: E402

BEFORE = ["data.packing=false", "model.attn_implementation=sdpa", "data.cache_vision_features=false"]


def _bernoulli_dropout(module: nn.Module) -> None:
    """The LoRA dropout as peft builds it (nn.Dropout), for the `before` variant."""
    for owner in module.modules():
        table = getattr(owner, "lora_dropout", None)
        if isinstance(table, nn.ModuleDict):
            for name, dropout in table.items():
                if isinstance(dropout, RandDropout):
                    table[name] = nn.Dropout(dropout.p)


def setup(stage: int, world: Path, cache: Path, overrides: list[str], after: bool, drop: float = 0.0):
    config, module, dataset = demo_training(stage, world, [f"data.vision_feature_cache={cache}", *overrides])
    model = module.model
    if drop:
        dataset.token_drop = (drop, 0)
    if after and BF16:
        store_frozen_linears_in(model, torch.bfloat16)
    if not after:
        _bernoulli_dropout(model.language_model)
    collate = Collator(model.tokenizer.pad_token_id, packing=config.data.packing,
                       pack_length=packed_row_length(config.model))
    return module, dataset, collate, build_optimizer(module, config.train)


def step(variant, indices) -> float:
    module, dataset, collate, optimizer = variant
    started = time.perf_counter()
    batch = collate([dataset[i] for i in indices])
    with SingleProcess().autocast():
        total, _, _ = module(batch)
    total.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def measure(stage: int, world: Path, cache: Path, batches: int) -> dict:
    variants = {"before": setup(stage, world, cache, BEFORE, after=False), "after": setup(stage, world, cache, [], True)}
    if stage == 1:
        variants["after+drop"] = setup(stage, world, cache, [], True, drop=0.5)
    sampler = LengthGroupedBatchSampler(variants["before"][1].estimated_lengths(), 8, 0)
    chosen = sampler.batches()[1:batches + 2]
    names = list(variants)
    for name in names:
        step(variants[name], chosen[0])  # warm-up
    seconds = {name: 0.0 for name in names}
    for i, indices in enumerate(chosen[1:]):
        for name in (names if i % 2 == 0 else names[::-1]):
            seconds[name] += step(variants[name], indices)
    per_step = {name: value / batches for name, value in seconds.items()}
    out = {"s_per_step": per_step, "after_over_before": per_step["after"] / per_step["before"]}
    if "after+drop" in per_step:
        out["drop_over_after"] = per_step["after+drop"] / per_step["after"]
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default="1,2")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--world", type=Path, default=REPO / "runs" / "demo" / "world")
    args = parser.parse_args(argv)
    if not (args.world / "stage2.json").is_file():
        from vlalign.data.shapes import generate_world

        generate_world(args.world, n_train=1500, n_test=8, seed=0)
    cache = Path(tempfile.mkdtemp(prefix="vlalign-demo-step-"))
    results = {}
    for stage in map(int, args.stages.split(",")):
        results[f"stage{stage}"] = r = measure(stage, args.world, cache, args.batches)
        print(f"stage {stage}: " + ", ".join(f"{k} {v:.3f} s/step" for k, v in r["s_per_step"].items())
              + f"; after/before {r['after_over_before']:.3f}"
              + (f", drop/after {r['drop_over_after']:.3f}" if "drop_over_after" in r else ""))
    results.update({"bf16": BF16, "threads": torch.get_num_threads(), "batches": args.batches})
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
