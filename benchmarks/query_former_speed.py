"""Benchmark: Q-Former vs X-Former pre-training step time and peak memory (X-Former Table 7: 39 h vs 43 h,
3.3 GB vs 4.6 GB on their GPUs).

The demo's set-up: packaged EfficientNet-Lite0 stage-3 features, Q-Former from the packaged MiniLM-L6 with
32 queries, text up to 64 tokens; X-Former adds a demo-sized MAE (ViT 224/16, 4 x 192 encoder, 2 x 128
decoder, random weights: the cost does not depend on them) at 50% masking. A step = forward with ITC + ITM
+ ITG (+ reconstruction) and backward, no optimizer update, batch 16 (the demo's pre-training batch).

- time: both models in one process, steps interleaved (order alternating), median seconds per step;
- memory: each model in its own child process; peak RSS (CPU) or peak allocated CUDA memory during the
  steps, minus the same figure after the model was built = what training adds; plus the whole peak.

    python benchmarks/query_former_speed.py [--rounds 6] [--batch 16] [--threads N]

The last line of stdout is JSON: `qformer_s`, `xformer_ratio` (step time), `xformer_memory_ratio` (training
memory), `*_peak_mb`, `*_trainable_params`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _env import REPO  # offline env + repo on sys.path, before torch and vlalign
from _training import training_setup  # noqa: E402

import torch  # noqa: E402

from vlalign.config import load_config  # noqa: E402
from vlalign.models.vlm import VisionLanguageModel  # noqa: E402
from vlalign.train.stages import apply_tune  # noqa: E402

NAMES = ("qformer", "xformer")


def _config(name: str, work: Path):
    options = {"num_queries": 32, "max_text_length": 64}
    if name == "xformer":
        options.update(mae=str(work / "mae" / "final"), mask_ratio=0.5)
    return load_config(REPO / "configs" / "quickstart-stage1.yaml", [
        f"data.train_file={work / 'world' / 'stage1.json'}", f"data.image_root={work / 'world'}",
        f"model.connector={name}", f"model.connector_options={json.dumps(options)}", f"objectives={{{name}: {{}}}}"])


def _setup(name: str, work: Path, batch_size: int):
    config = _config(name, work)
    torch.manual_seed(0)
    model = VisionLanguageModel.from_config(config.model)
    apply_tune(model, 1, config.train.tune)
    module, batch = training_setup(model, config, config.objectives, batch_size)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module, batch = module.to(device), batch.to(device)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return module, batch, trainable


def _step(module, batch) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16):
        total, _, _ = module(batch)
    total.backward()
    module.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def _peak_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(name: str, work: Path, batch_size: int, steps: int) -> None:
    module, batch, trainable = _setup(name, work, batch_size)
    built = _peak_mb()
    for _ in range(steps):
        _step(module, batch)
    peak = _peak_mb()
    print(json.dumps({"built_mb": built, "peak_mb": peak, "training_mb": peak - built, "trainable": trainable}))


def _memory(name: str, work: Path, batch_size: int) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", name, "--work", str(work), "--batch", str(batch_size)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--child", choices=NAMES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child(args.child, args.work, args.batch, steps=2)
    from vlalign.data.shapes import generate_world
    from vlalign.mae.pretrain import pretrain_mae

    work = Path(tempfile.mkdtemp(prefix="vlalign-query-speed-"))
    generate_world(work / "world", n_train=max(32, args.batch), n_test=4, seed=0)
    pretrain_mae(work / "world" / "images" / "train", work / "mae", max_steps=1, progress=False)
    memory = {name: _memory(name, work, args.batch) for name in NAMES}
    setups = {name: _setup(name, work, args.batch) for name in NAMES}
    for _ in range(args.warmup):
        for module, batch, _ in setups.values():
            _step(module, batch)
    times = {name: [] for name in NAMES}
    load_before = os.getloadavg()[0]
    for round_index in range(args.rounds):
        for name in (NAMES if round_index % 2 == 0 else NAMES[::-1]):
            times[name].append(_step(*setups[name][:2]))
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {"qformer_s": medians["qformer"], "xformer_s": medians["xformer"],
              "xformer_ratio": medians["xformer"] / medians["qformer"],
              "xformer_memory_ratio": memory["xformer"]["training_mb"] / memory["qformer"]["training_mb"],
              **{f"{name}_{key}": memory[name][key] for name in NAMES for key in ("peak_mb", "training_mb")},
              **{f"{name}_trainable_params": setups[name][2] for name in NAMES},
              "paper_ratios": {"time": 43 / 39, "memory_stage1": 4.6 / 3.3},
              "batch": args.batch, "rounds": args.rounds, "threads": torch.get_num_threads(),
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "load_avg_before": load_before, "load_avg_after": os.getloadavg()[0]}
    for name in NAMES:
        print(f"{name:8s} {medians[name]:.3f} s/step  peak {memory[name]['peak_mb']:.0f} MB  "
              f"training +{memory[name]['training_mb']:.0f} MB  trainable {setups[name][2]:,}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
