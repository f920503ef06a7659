"""`vlalign eval benchmarks` (answer + score a benchmark with a checkpoint) and `vlalign eval score` (score
saved predictions; no model)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from accelerate import PartialState

from vlalign.distributed import gather_objects
from vlalign.errors import DataError
from vlalign.eval.benchmark_run import answer_questions, prompts_for, run_benchmark, score_and_write
from vlalign.eval.benchmarks.answers_file import read_predictions
from vlalign.eval.benchmarks.catalog import Benchmark, benchmark_named, max_new_tokens_for
from vlalign.files import write_file_atomically
from vlalign.train.load import checkpoint_fingerprint, load_checkpoint_model, resolve_checkpoint


def default_image_root(data: Path, image_root: str | Path | None) -> Path:
    """Relative image paths are taken under --image-root, else under the data file's folder (or the data
    folder itself)."""
    if image_root is not None:
        return Path(image_root)
    data = Path(data)
    return data if data.is_dir() else data.parent


def check_images(records: list[dict], image_root: Path) -> None:
    """Every image file exists, checked before the model loads (minutes on a 7B model) rather than after."""
    for record in records:
        ref = record["image"]
        if isinstance(ref, str):
            path = Path(ref) if Path(ref).is_absolute() else image_root / ref
            if not path.is_file():
                raise DataError(f"image {path} not found (set --image-root to the folder holding the images)",
                                reason="missing_image", record_id=record["question_id"], field="image")


def read_benchmark(benchmark: Benchmark, data: str | Path, image_root: Path, split: str | None,
                   limit: int | None) -> list[dict]:
    """The benchmark's records; `limit` keeps the first N, as lmms-eval's --limit does."""
    records = benchmark.read(Path(data), image_root, split)
    if limit is not None:
        if limit < 1:
            raise DataError(f"--limit must be at least 1, got {limit}", reason="bad_limit")
        records = records[:limit]
    if not records:
        raise DataError(f"{benchmark.name}: no questions read", reason="no_records", file=str(data))
    return records


def _sharded(model, config, benchmark: Benchmark, records: list[dict], out: Path, state, scoring: str,
             options: dict, identity: dict) -> dict | None:
    """Several processes (`accelerate launch` / `torchrun`): rank r answers every world-th question into
    OUT/rank<r>/answers.jsonl (each resumable on its own); the main process gathers them, writes the merged
    OUT/answers.jsonl in the set's order and scores. Returns the result on the main process, else None."""
    rank, world = state.process_index, state.num_processes
    started = time.perf_counter()
    mine = records[rank::world]
    predictions, answered_now = answer_questions(
        model, config, benchmark, mine, out / f"rank{rank}", identity={**identity, "rank": rank, "world": world},
        progress=state.is_main_process, **options)
    gathered = dict(gather_objects(list(predictions.items())))
    answered_now = sum(gather_objects([answered_now]))
    seconds = time.perf_counter() - started
    if not state.is_main_process:
        return None
    prompts = prompts_for(benchmark, records)
    write_file_atomically(out / "answers.jsonl", "".join(
        json.dumps({"question_id": r["question_id"], "prompt": prompt, "text": gathered[r["question_id"]],
                    "model_id": identity["checkpoint"]}) + "\n" for r, prompt in zip(records, prompts)))
    return score_and_write(benchmark, records, gathered, out, scoring, {
        "answered_now": answered_now, "processes": world, "answer_seconds": round(seconds, 3),
        "questions_per_second": round(answered_now / seconds, 3) if answered_now else None, **identity})


def run_benchmarks_command(checkpoint: str | Path, name: str, data: str | Path, out: str | Path, *,
                           image_root=None, split=None, limit=None, scoring="official", batch_size=8,
                           max_new_tokens=None, blank=False, device=None) -> dict | None:
    """Returns the result (None on the other processes of a multi-process run)."""
    benchmark = benchmark_named(name)
    root = default_image_root(Path(data), image_root)
    records = read_benchmark(benchmark, data, root, split, limit)
    check_images(records, root)
    folder = resolve_checkpoint(checkpoint)  # a bad checkpoint fails before anything is written
    # Under torchrun / accelerate launch this joins the process group (gloo on CPUs) and names the device.
    state = PartialState(cpu=not torch.cuda.is_available())
    model, config = load_checkpoint_model(folder, device or state.device, merge_adapters=True)
    identity = {"checkpoint": str(folder.resolve()), "weights": checkpoint_fingerprint(folder),
                "data": str(Path(data).resolve()), "split": split}
    options = {"image_root": root, "batch_size": batch_size, "blank": blank,
               "max_new_tokens": max_new_tokens_for(benchmark, scoring, max_new_tokens)}
    if state.num_processes > 1:
        return _sharded(model, config, benchmark, records, Path(out), state, scoring, options, identity)
    return run_benchmark(model, config, benchmark, records, Path(out), scoring=scoring, identity=identity,
                         **options)


def score_command(name: str, questions: str | Path, predictions: str | Path, out: str | Path, *,
                  scoring="official", split=None) -> dict:
    """Scores an answers file against a benchmark's questions. Predictions for questions the file does not
    hold are counted and reported (`unmatched_predictions`), not silently dropped."""
    benchmark = benchmark_named(name)
    records = read_benchmark(benchmark, questions, default_image_root(Path(questions), None), split, None)
    answered = read_predictions(predictions)
    known = {record["question_id"] for record in records}
    unmatched = sorted(key for key in answered if key not in known)
    return score_and_write(benchmark, records, answered, Path(out), scoring, {
        "predictions": str(Path(predictions).resolve()), "unmatched_predictions": len(unmatched),
        "unmatched_examples": unmatched[:5]})


def headline_line(result: dict) -> str:
    cells = ", ".join(f"{key} {value:.1f}" for key, value in result["headline"].items())
    speed = result.get("questions_per_second")
    return f"{result['benchmark']} ({result['scoring']}, n={result['n']}): {cells}" + (
        f"; {speed:.2f} questions/s" if speed else "")
