"""Benchmark: evaluation throughput (questions per second) of `vlalign eval benchmarks`' answering loop.

A trained stage-2 checkpoint (default: the demo's, `runs/demo/generative/stage2`) answers the first N
questions of the demo world's GQA set (its official-format file) with LLaVA-1.5's prompt, greedy, at
several batch sizes, through `vlalign.eval.benchmark_run.generate_answers` (the loop the command, the demo
and `train.eval` share). Batch sizes run interleaved in one process, rounds rotating the order; median
seconds per pass. The answers must be identical at every batch size (left padding changes nothing).

    python benchmarks/eval_throughput.py [--checkpoint DIR] [--world DIR] [--questions 48]
        [--batch-sizes 1,8,16] [--max-new-tokens 32] [--rounds 3]

The last line of stdout is a JSON object: `questions_per_s_b<B>` per batch size and `speedup_b<B>` =
questions/s at batch B over the first batch size (1 by default; the reference, same process).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from _env import REPO  # offline env + repo on sys.path, before torch and vlalign

import torch  # noqa: E402

from vlalign.eval.benchmark_run import generate_answers  # noqa: E402
from vlalign.eval.benchmarks.catalog import benchmark_named  # noqa: E402
from vlalign.train.load import load_checkpoint_model  # noqa: E402


def _pass(model, config, benchmark, records, world: Path, batch: int, max_new_tokens: int) -> tuple[float, list]:
    started = time.perf_counter()
    answers = generate_answers(model, config, benchmark, records, image_root=world, batch_size=batch,
                               max_new_tokens=max_new_tokens)
    return time.perf_counter() - started, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(REPO / "runs/demo/generative/stage2"))
    parser.add_argument("--world", default=str(REPO / "runs/demo/world"))
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--batch-sizes", default="1,8,16")
    parser.add_argument("--max-new-tokens", type=int, default=32)  # the demo's cap
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    world = Path(args.world)
    benchmark = benchmark_named("gqa")
    records = benchmark.read(world / "test/official/gqa/testdev_balanced_questions.json", world, None)
    records = records[:args.questions]
    model, config = load_checkpoint_model(args.checkpoint, "cpu")
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    times: dict[int, list[float]] = {size: [] for size in sizes}
    answers: dict[int, list] = {}
    with torch.no_grad():
        for round_index in range(args.rounds):
            order = sizes[round_index % len(sizes):] + sizes[:round_index % len(sizes)]
            for size in order:
                seconds, answers[size] = _pass(model, config, benchmark, records, world, size, args.max_new_tokens)
                times[size].append(seconds)
    same = all(answers[size] == answers[sizes[0]] for size in sizes)
    result = {"questions": len(records), "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(),
              "answers_identical_across_batch_sizes": same}
    reference = len(records) / statistics.median(times[sizes[0]])
    for size in sizes:
        rate = len(records) / statistics.median(times[size])
        result[f"questions_per_s_b{size}"] = round(rate, 2)
        result[f"speedup_b{size}"] = round(rate / reference, 2)
        print(f"batch {size:>3}: {rate:6.2f} questions/s ({rate / reference:.2f}x batch {sizes[0]})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
