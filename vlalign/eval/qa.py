"""Benchmark-style QA evaluation: batched greedy answers, answer parsing, and the benchmarks' metrics.

Test records (written by `vlalign data shapes`): `{id, image, question, answer, benchmark, type}` plus
`negative` (POPE split), `pair` (MME image pair) or `choices` (multiple choice). Parsing follows the
benchmarks' own evaluation scripts in spirit: POPE/MME read yes/no from the first words, multiple choice
takes the first option letter, short answers are compared after normalisation.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from vlalign.data.build import image_transform_for
from vlalign.data.images import load_image
from vlalign.eval.answering import answer_batch, blank_image

NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10"}


def normalize(text: str) -> str:
    words = re.sub(r"[^a-z0-9 ]", " ", text.lower()).split()
    words = [NUMBER_WORDS.get(w, w) for w in words if w not in {"a", "an", "the"}]
    return " ".join(words)


def parse_yes_no(prediction: str) -> str:
    """'yes' / 'no' from the first words; anything else counts as neither ('other')."""
    words = normalize(prediction).split()[:3]
    if "no" in words or "not" in words:
        return "no"
    return "yes" if "yes" in words else "other"


def parse_choice(prediction: str, choices: list[str]) -> str:
    letters = "".join(chr(ord("A") + i) for i in range(len(choices)))
    match = re.match(rf"\s*\(?([{letters}])(?:[\).:]|\s|$)", prediction.strip())
    if match:
        return match.group(1)
    norm = normalize(prediction)
    for index, choice in enumerate(choices):  # the option's text instead of its letter
        if norm == normalize(choice):
            return chr(ord("A") + index)
    return "?"


def is_correct(record: dict, prediction: str) -> bool:
    if record["benchmark"] in ("pope", "mme"):
        return parse_yes_no(prediction) == record["answer"].lower()
    if "choices" in record:
        return parse_choice(prediction, record["choices"]) == record["answer"]
    return normalize(prediction) == normalize(record["answer"])


def predict(model, config, records: list[dict], image_root: str | Path, *, batch_size: int = 16,
            blank: bool = False, progress=None) -> list[str]:
    """Answers for every record; `blank=True` replaces every image by a blank one (text-only baseline)."""
    transform = image_transform_for(model)
    blank_pixels = transform(blank_image(model)) if blank else None
    predictions = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        images = [blank_pixels if blank else transform(load_image(Path(image_root) / r["image"])) for r in chunk]
        predictions.extend(answer_batch(model, config, [r["question"] for r in chunk], images))
        if progress is not None:
            progress.update(len(chunk))
    return predictions


def _binary_metrics(golds: list[str], predicted: list[str]) -> dict[str, float]:
    tp = sum(g == "yes" and p == "yes" for g, p in zip(golds, predicted))
    fp = sum(g == "no" and p == "yes" for g, p in zip(golds, predicted))
    fn = sum(g == "yes" and p != "yes" for g, p in zip(golds, predicted))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {"accuracy": sum(g == p for g, p in zip(golds, predicted)) / len(golds),
            "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "yes_ratio": sum(p == "yes" for p in predicted) / len(predicted), "n": len(golds)}


def pope_metrics(records: list[dict], predictions: list[str]) -> dict[str, dict]:
    by_split = defaultdict(lambda: ([], []))
    for record, prediction in zip(records, predictions):
        golds, predicted = by_split[record.get("negative", "all")]
        golds.append(record["answer"].lower())
        predicted.append(parse_yes_no(prediction))
    return {split: _binary_metrics(*pair) for split, pair in sorted(by_split.items())}


def mme_metrics(records: list[dict], predictions: list[str]) -> dict[str, float]:
    """acc: per question; acc+: share of images (pairs) whose two questions are both right (MME)."""
    pairs = defaultdict(list)
    for record, prediction in zip(records, predictions):
        pairs[record["pair"]].append(is_correct(record, prediction))
    per_question = [ok for oks in pairs.values() for ok in oks]
    return {"acc": sum(per_question) / len(per_question),
            "acc_plus": sum(all(oks) for oks in pairs.values()) / len(pairs), "n_pairs": len(pairs)}


def accuracy_by_type(records: list[dict], predictions: list[str]) -> dict[str, dict]:
    by_type = defaultdict(list)
    for record, prediction in zip(records, predictions):
        by_type[record["type"]].append(is_correct(record, prediction))
    table = {kind: {"accuracy": sum(oks) / len(oks), "n": len(oks)} for kind, oks in sorted(by_type.items())}
    every = [ok for oks in by_type.values() for ok in oks]
    table["all"] = {"accuracy": sum(every) / len(every), "n": len(every)}
    return table


def benchmark_metrics(name: str, records: list[dict], predictions: list[str]) -> dict:
    if not records:
        raise ValueError(f"benchmark {name!r} has no records")
    metrics = {"by_type": accuracy_by_type(records, predictions)}
    if name == "pope":
        metrics["pope"] = pope_metrics(records, predictions)
    if name == "mme":
        metrics["mme"] = mme_metrics(records, predictions)
    return metrics
