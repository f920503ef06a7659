"""The benchmarks `vlalign eval benchmarks` / `eval score` know: for each, its reader, its scorer, LLaVA-1.5's
answer-format instruction and generation length, and the figures papers quote it by."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from vlalign.errors import ConfigError
from vlalign.eval.benchmarks import gqa, mme, mmbench, pope, science_qa, seed_bench, vqa


@dataclass(frozen=True)
class Benchmark:
    name: str
    read: Callable  # (path, image_root=None, split=None) -> records
    score: Callable  # (records, predictions by question id, scoring) -> (decisions, metrics)
    prompt_suffix: str  # appended to each record's question (LLaVA-1.5's evaluation prompts)
    max_new_tokens: int  # LLaVA-1.5's evaluation scripts'
    lmms_eval_max_new_tokens: int  # lmms-eval's task (the default under --scoring lmms-eval)
    # metrics -> the numbers a paper's table shows, as it prints them (percent; MME in its own points)
    headline: Callable[[dict], dict[str, float]]


def _pope_headline(metrics: dict) -> dict[str, float]:
    row = {f"POPE {split} F1": 100 * split_metrics["f1"] for split, split_metrics in metrics["splits"].items()}
    return {**row, "POPE mean F1": 100 * metrics["mean_f1"], "POPE acc": 100 * metrics["all"]["accuracy"]}


def _mme_headline(metrics: dict) -> dict[str, float]:
    present = metrics["categories"]
    return {f"MME {side}": metrics[side] for side, names in (("perception", mme.PERCEPTION),
                                                             ("cognition", mme.COGNITION))
            if any(name in present for name in names)}


def _module(name: str, module, read, score, headline, lmms_eval_max_new_tokens: int | None = None) -> Benchmark:
    return Benchmark(name, read, score, module.PROMPT_SUFFIX, module.MAX_NEW_TOKENS,
                     lmms_eval_max_new_tokens or module.LMMS_EVAL_MAX_NEW_TOKENS, headline)


BENCHMARKS: dict[str, Benchmark] = {benchmark.name: benchmark for benchmark in (
    _module("pope", pope, pope.read_pope, pope.score_pope, _pope_headline),
    _module("mme", mme, mme.read_mme, mme.score_mme, _mme_headline),
    _module("scienceqa", science_qa, science_qa.read_science_qa, science_qa.score_science_qa,
            lambda m: {"SQA-IMG acc": 100 * m["img_accuracy"], "SQA acc": 100 * m["accuracy"]}),
    _module("gqa", gqa, gqa.read_gqa, gqa.score_gqa, lambda m: {"GQA acc": 100 * m["accuracy"]}),
    _module("vqav2", vqa, vqa.read_vqav2, vqa.score_vqav2, lambda m: {"VQAv2 acc": 100 * m["accuracy"]}),
    _module("textvqa", vqa, vqa.read_textvqa, vqa.score_textvqa, lambda m: {"TextVQA acc": 100 * m["accuracy"]},
            vqa.TEXTVQA_LMMS_EVAL_MAX_NEW_TOKENS),
    _module("mmbench", mmbench, mmbench.read_mmbench, mmbench.score_mmbench,
            lambda m: {"MMBench acc": 100 * m["circular_accuracy"], "MMBench vanilla acc": 100 * m["vanilla_accuracy"]}),
    _module("seedbench", seed_bench, seed_bench.read_seed_bench, seed_bench.score_seed_bench,
            lambda m: {"SEED-IMG acc": 100 * m["image_accuracy"]}),
)}


def max_new_tokens_for(benchmark: Benchmark, scoring: str, requested: int | None) -> int:
    """What to generate: the user's choice, else the length of the scoring's own harness."""
    if requested is not None:
        return requested
    return benchmark.lmms_eval_max_new_tokens if scoring == "lmms-eval" else benchmark.max_new_tokens


def benchmark_named(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
