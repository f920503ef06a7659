"""The demo's evaluation: the world's held-out sets, read from their official-format files
(`test/official/`, written by `vlalign data shapes`) with the benchmarks' own readers, answered and scored
by `vlalign.eval.benchmark_run` exactly as `vlalign eval benchmarks` would, with the real images and with
blank images. Each set also gets accuracy per world question type (colour, shape, count, ...)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from vlalign.demo.presets import DEMO_MAX_NEW_TOKENS, DEMO_SETS
from vlalign.eval.benchmark_run import run_benchmark
from vlalign.eval.benchmarks.catalog import benchmark_named



def _sample_groups(records: list[dict], limit: int, seed: int, group, stratum=lambda record: "") -> list[dict]:
    """A deterministic sample of about `limit` questions, in the set's order, that keeps groups whole (MME's
    acc+ needs both questions of an image; POPE asks a yes and a no per image and split) and takes the same
    share from every stratum (POPE's three splits stay equal and balanced, as in the real benchmark)."""
    if len(records) <= limit:
        return records
    strata: dict[str, dict[str, list[int]]] = {}
    for index, record in enumerate(records):
        strata.setdefault(stratum(record), {}).setdefault(group(record), []).append(index)
    rng, chosen = random.Random(seed), set()
    for groups in strata.values():
        keys, count = list(groups), 0
        rng.shuffle(keys)
        for key in keys:
            if count >= limit // len(strata):
                break
            chosen.update(groups[key])
            count += len(groups[key])
    return [records[i] for i in sorted(chosen)]


SAMPLING = {  # benchmark -> (group, stratum) of the demo's subsets
    "pope": (lambda r: (r["category"], r["image"]), lambda r: r["category"]),
    "mme": (lambda r: r["pair"], lambda r: ""),
}


def demo_sets(world: Path, limit: int, seed: int) -> dict[str, list[dict]]:
    """Each set's records as its benchmark's reader returns them, subsampled to ~`limit` questions."""
    sets = {}
    for name, (benchmark, folder, _) in DEMO_SETS.items():
        records = benchmark_named(benchmark).read(world / "test" / "official" / folder, world, None)
        group, stratum = SAMPLING.get(benchmark, (lambda r: r["question_id"], lambda r: ""))
        sets[name] = _sample_groups(records, limit, seed, group, stratum)
    return sets


def world_question_types(world: Path) -> dict[str, str]:
    """question id -> the world's question kind, from the world's own records (ids are shared)."""
    types = {}
    for _, _, own in DEMO_SETS.values():
        types.update({r["id"]: r["type"] for r in json.loads((world / "test" / own).read_text())})
    return types


def accuracy_by_type(records: list[dict], per_sample: list[dict], types: dict[str, str]) -> dict[str, dict]:
    """GQA / ScienceQA keep the world's ids, so their kinds join back; POPE's reader prefixes its split and
    MME names its questions by image, so those two are broken down by their own split / category."""
    table: dict[str, list[bool]] = {}
    for record, row in zip(records, per_sample):
        kind = types.get(record["question_id"]) or record["category"]
        table.setdefault(kind, []).append(row["correct"])
    result = {kind: {"accuracy": sum(marks) / len(marks), "n": len(marks)} for kind, marks in sorted(table.items())}
    every = [mark for marks in table.values() for mark in marks]
    result["all"] = {"accuracy": sum(every) / len(every), "n": len(every)}
    return result


def evaluate_sets(model, config, world: Path, sets: dict[str, list[dict]], out: Path, blank: bool,
                  identity: dict, batch_size: int = 16) -> dict[str, dict]:
    """Per set: official metrics + headline, lmms-eval's headline on the same answers, accuracy by type.
    Answers are kept in out/<set>/answers.jsonl; `identity` names the checkpoint, so a stopped demo resumes
    its evaluation and a retrained one starts it afresh."""
    types, results = world_question_types(world), {}
    for name, records in sets.items():
        benchmark = benchmark_named(DEMO_SETS[name][0])
        folder = out / name
        official = run_benchmark(model, config, benchmark, records, folder, image_root=world, blank=blank,
                                 max_new_tokens=min(benchmark.max_new_tokens, DEMO_MAX_NEW_TOKENS),
                                 batch_size=batch_size, identity={**identity, "set": name}, restart_other=True)
        per_sample = [json.loads(line) for line in (folder / "per_sample.jsonl").read_text().splitlines()]
        predictions = {row["question_id"]: row["prediction"] for row in per_sample}
        _, lmms_metrics = benchmark.score(records, predictions, "lmms-eval")
        results[name] = {"benchmark": benchmark.name, "metrics": official["metrics"],
                         "headline": official["headline"], "lmms_eval_headline": benchmark.headline(lmms_metrics),
                         "by_type": accuracy_by_type(records, per_sample, types),
                         "questions_per_second": official["questions_per_second"]}
    return results
