"""Answer a benchmark's questions with a live model and score them the benchmark's way.

The loop behind `vlalign eval benchmarks`, the demo's evaluation and evaluation during training: LLaVA-1.5's
prompt per benchmark (the question, then the benchmark's answer-format instruction), batched greedy
generation, answers appended to `answers.jsonl` batch by batch (an interrupted run resumes where it
stopped), then the benchmark's scorer -> `metrics.json` + `per_sample.jsonl`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from vlalign.data.build import image_transform_for
from vlalign.errors import ConfigError
from vlalign.eval.answering import answer_batch, blank_image
from vlalign.eval.benchmarks.answers_file import append_answers, drop_torn_tail, read_answers
from vlalign.eval.benchmarks.catalog import Benchmark, max_new_tokens_for
from vlalign.eval.benchmarks.tables import open_image
from vlalign.files import write_file_atomically


def prompts_for(benchmark: Benchmark, records: list[dict]) -> list[str]:
    """What the model is asked: the question as the benchmark poses it + LLaVA-1.5's answer instruction."""
    return [record["question"] + benchmark.prompt_suffix for record in records]


def _pixels(records: list[dict], model, image_root, blank: bool) -> list:
    transform = image_transform_for(model)
    if blank:  # the text-only baseline: every image replaced by the tower's mean colour
        pixels = transform(blank_image(model))
        return [None if record["image"] is None else pixels for record in records]
    return [None if record["image"] is None else transform(open_image(record["image"], image_root))
            for record in records]


def generate_answers(model, config, benchmark: Benchmark, records: list[dict], *, image_root=None,
                     batch_size: int = 8, max_new_tokens: int | None = None, blank: bool = False,
                     on_batch=None) -> list[str]:
    """Greedy answers to `records` in order, batch by batch; `on_batch(chunk, texts)` sees each batch as it
    is done (to save it, to move a progress bar)."""
    max_new_tokens = max_new_tokens or benchmark.max_new_tokens
    answers = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        texts = answer_batch(model, config, prompts_for(benchmark, chunk), _pixels(chunk, model, image_root, blank),
                             max_new_tokens=max_new_tokens)
        answers.extend(texts)
        if on_batch is not None:
            on_batch(chunk, texts)
    return answers


def _check_same_run(out: Path, identity: dict, restart_other: bool) -> None:
    """An answers file belongs to one (checkpoint, benchmark, data, generation settings); resuming another
    run's file would mix two models' answers in one score. `restart_other`: discard it instead of refusing
    (the demo, which owns its folders)."""
    path = out / "run.json"
    if path.is_file():
        earlier = json.loads(path.read_text())
        changed = [key for key in identity if earlier.get(key) != identity[key]]
        if changed and restart_other:
            (out / "answers.jsonl").unlink(missing_ok=True)
        elif changed and (out / "answers.jsonl").is_file():
            raise ConfigError(f"{out} holds answers of another run ({', '.join(changed)} differ: "
                              f"{', '.join(f'{k}={earlier.get(k)!r}' for k in changed)}); use another --out")
    write_file_atomically(path, json.dumps(identity, indent=2))


def answer_questions(model, config, benchmark: Benchmark, records: list[dict], out: Path, *, image_root=None,
                     batch_size: int = 8, max_new_tokens: int | None = None, blank: bool = False,
                     identity: dict | None = None, progress: bool = True,
                     restart_other: bool = False) -> tuple[dict[str, str], int]:
    """Answers of every record (question id -> text), appended to out/answers.jsonl as they come; answers
    already there (same run) are kept. Returns (predictions, how many were generated now)."""
    out.mkdir(parents=True, exist_ok=True)
    max_new_tokens = max_new_tokens or benchmark.max_new_tokens
    _check_same_run(out, {**(identity or {}), "benchmark": benchmark.name, "max_new_tokens": max_new_tokens,
                          "blank": blank}, restart_other)
    path = out / "answers.jsonl"
    drop_torn_tail(path)
    done = read_answers(path) if path.is_file() else {}
    prompts = dict(zip((r["question_id"] for r in records), prompts_for(benchmark, records)))
    for key, row in done.items():
        if key in prompts and row.get("prompt", prompts[key]) != prompts[key]:
            raise ConfigError(f"{path}: question {key!r} was answered with another prompt; use another --out")
    todo = [record for record in records if record["question_id"] not in done]
    model_id = (identity or {}).get("checkpoint", "")
    with tqdm(total=len(records), initial=len(records) - len(todo), desc=f"eval {benchmark.name}",
              dynamic_ncols=True, disable=not progress) as bar:
        def save(chunk: list[dict], texts: list[str]) -> None:
            append_answers(path, [{"question_id": r["question_id"], "prompt": prompts[r["question_id"]],
                                   "text": text, "model_id": model_id} for r, text in zip(chunk, texts)])
            bar.update(len(chunk))

        generate_answers(model, config, benchmark, todo, image_root=image_root, batch_size=batch_size,
                         max_new_tokens=max_new_tokens, blank=blank, on_batch=save)
    answered = {key: row["text"] for key, row in read_answers(path).items()}
    return {r["question_id"]: answered[r["question_id"]] for r in records}, len(todo)


def score_and_write(benchmark: Benchmark, records: list[dict], predictions: dict[str, str], out: Path,
                    scoring: str, extra: dict | None = None) -> dict:
    """Score, then write metrics.json (no NaN can be saved: allow_nan=False) and per_sample.jsonl."""
    decisions, metrics = benchmark.score(records, predictions, scoring)
    result = {"benchmark": benchmark.name, "scoring": scoring, "n": len(records),
              "headline": benchmark.headline(metrics), "metrics": metrics, **(extra or {})}
    out.mkdir(parents=True, exist_ok=True)
    write_file_atomically(out / "per_sample.jsonl", "".join(
        json.dumps(dataclasses.asdict(d), ensure_ascii=False) + "\n" for d in decisions))
    write_file_atomically(out / "metrics.json", json.dumps(result, indent=2, allow_nan=False))
    return result


def run_benchmark(model, config, benchmark: Benchmark, records: list[dict], out: Path, *, scoring="official",
                  image_root=None, batch_size: int = 8, max_new_tokens: int | None = None, blank=False,
                  identity: dict | None = None, progress: bool = True, restart_other: bool = False) -> dict:
    """Answer (resuming), score and write; the result carries the measured questions per second."""
    started = time.perf_counter()
    max_new_tokens = max_new_tokens_for(benchmark, scoring, max_new_tokens)
    predictions, answered_now = answer_questions(
        model, config, benchmark, records, out, image_root=image_root, batch_size=batch_size,
        max_new_tokens=max_new_tokens, blank=blank, identity=identity, progress=progress,
        restart_other=restart_other)
    seconds = time.perf_counter() - started
    return score_and_write(benchmark, records, predictions, out, scoring, {
        "answered_now": answered_now, "answer_seconds": round(seconds, 3),
        "questions_per_second": round(answered_now / seconds, 3) if answered_now and seconds > 0 else None,
        **(identity or {})})
