"""Benchmarks on the live model while it trains (`train.eval`): a step hook for the training loop.

The loop hands the hook its own model (LoRA active; no second copy is loaded) in eval mode with the
training RNG streams saved and restored around it, so evaluating never changes what is trained. Under
several processes each rank answers its share of the questions; the answers are gathered and every rank
scores the same set, so all log the same numbers. The main process writes each evaluation to
`<output_dir>/eval/step-NNNNNN/<benchmark>/` (answers, per-sample decisions, metrics).
"""

from __future__ import annotations

import json
from pathlib import Path

from vlalign.config import RunConfig
from vlalign.distributed import gather_objects, rank, world_size
from vlalign.eval.benchmark_command import check_images, default_image_root, read_benchmark
from vlalign.eval.benchmark_run import generate_answers, prompts_for, score_and_write
from vlalign.eval.benchmarks.answers_file import append_answers
from vlalign.eval.benchmarks.catalog import benchmark_named, max_new_tokens_for
from vlalign.files import write_file_atomically


def _due(every: int | None, step: int, total_steps: int) -> bool:
    return step == total_steps or bool(every and step % every == 0)


def _load_sets(config: RunConfig) -> list[tuple]:
    """Every configured benchmark read (and its images checked) now, so a wrong path fails before training."""
    spec = config.train.eval
    sets, labels = [], []
    for entry in spec.benchmarks:
        benchmark = benchmark_named(entry.benchmark)
        root = default_image_root(Path(entry.data), entry.image_root)
        records = read_benchmark(benchmark, entry.data, root, entry.split, spec.limit)
        check_images(records, root)
        # a second set of the same benchmark (another split, say) logs and writes as pope_2, ...
        count = sum(label.split("_")[0] == benchmark.name for label in labels)
        labels.append(benchmark.name if count == 0 else f"{benchmark.name}_{count + 1}")
        sets.append((labels[-1], entry, benchmark, records, root))
    return sets


def _answers_of_all_ranks(model, config: RunConfig, benchmark, records: list[dict], root,
                          scoring: str) -> dict[str, str]:
    spec = config.train.eval
    mine = records[rank()::world_size()]
    texts = generate_answers(model, config, benchmark, mine, image_root=root, batch_size=spec.batch_size,
                             max_new_tokens=max_new_tokens_for(benchmark, scoring, spec.max_new_tokens))
    return dict(gather_objects([(r["question_id"], text) for r, text in zip(mine, texts)]))


def _write(out: Path, benchmark, records: list[dict], predictions: dict[str, str], entry, step: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "answers.jsonl").unlink(missing_ok=True)
    append_answers(out / "answers.jsonl", [{"question_id": r["question_id"], "prompt": prompt,
                                            "text": predictions[r["question_id"]], "model_id": f"step {step}"}
                                           for r, prompt in zip(records, prompts_for(benchmark, records))])
    write_file_atomically(out / "run.json", json.dumps({"benchmark": benchmark.name, "data": entry.data,
                                                        "step": step}, indent=2))
    return score_and_write(benchmark, records, predictions, out, entry.scoring, {"step": step})


def training_eval_hook(config: RunConfig):
    """The step hook for `config.train.eval`, or None when no benchmark is configured."""
    if not config.train.eval.benchmarks:
        return None
    sets = _load_sets(config)
    every = config.train.eval.every

    def evaluate(model, run_config: RunConfig, step: int, total_steps: int) -> dict[str, float]:
        if not _due(every, step, total_steps):
            return {}
        values = {}
        for label, entry, benchmark, records, root in sets:
            predictions = _answers_of_all_ranks(model, run_config, benchmark, records, root, entry.scoring)
            if rank() == 0:
                folder = Path(run_config.train.output_dir) / "eval" / f"step-{step:06d}" / label
                headline = _write(folder, benchmark, records, predictions, entry, step)["headline"]
            else:
                headline = benchmark.headline(benchmark.score(records, predictions, entry.scoring)[1])
            values.update({f"eval/{label}/{key}": value for key, value in headline.items()})
        return values

    return evaluate
