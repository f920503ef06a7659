"""SEED-Bench (single choice A-D, 12 dimensions: 1-9 on images, 10-12 on videos): the official scoring, and
lmms-eval's.

official (LLaVA-1.5's `convert_seed_for_submission.py`): the answer as LLaVA's `model_vqa_loader.py` writes it
(stripped) must equal the letter: "B" is right; "B. red", "b", "(B)" and "The answer is B." are wrong.
Accuracy overall and per dimension (question_type_id -> the name in SEED-Bench.json's `question_type`).
LLaVA-1.5's SEED column is the accuracy on the image questions (SEED-IMG).
lmms-eval (`tasks/seedbench/utils.py`): the stripped answer's first character, compared ignoring case: "B. red"
and "b" are right, "The answer is B." ("T") and "(B)" ("(") wrong. It reports image, video and overall
accuracy, no dimensions.

Reader: image questions only (SEED-IMG). Video questions (LLaVA-1.5 answers them from the middle frame,
lmms-eval from 8 frames) are skipped and counted: the count is logged and added to `skipped` when given.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from vlalign.errors import DataError
from vlalign.eval.benchmarks import tables
from vlalign.eval.benchmarks.common import (Decision, Scoring, check_scoring, duplicate_question_id, load_json_file,
                                            prediction_for, ratio, required_field, top_level_list)

# LLaVA-1.5's evaluation instruction (docs/Evaluation.md's multiple-choice format, its llava-seed-bench.jsonl;
# lmms-eval's seed_doc_to_text)
PROMPT_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
# LLaVA-1.5: model_vqa_loader.py's default --max_new_tokens, which seed.sh keeps; lmms-eval's seedbench.yaml
# sets none, so its llava model's default 1024
MAX_NEW_TOKENS = 128
LMMS_EVAL_MAX_NEW_TOKENS = 1024
LETTERS = ("A", "B", "C", "D")
FAILED = "FAILED"
# SEED-Bench.json's `question_type` (name -> id), inverted; lmms-lab/SEED-Bench carries only the ids.
DIMENSIONS = {1: "Scene Understanding", 2: "Instance Identity", 3: "Instance Attributes", 4: "Instance Location",
              5: "Instances Counting", 6: "Spatial Relation", 7: "Instance Interaction", 8: "Visual Reasoning",
              9: "Text Understanding", 10: "Action Recognition", 11: "Action Prediction",
              12: "Procedure Understanding"}
CHOICE_FIELDS = ("choice_a", "choice_b", "choice_c", "choice_d")

log = logging.getLogger(__name__)


def parse_official(text: str) -> str:
    letter = text.strip()
    return letter if letter in LETTERS else FAILED


def parse_lmms_eval(text: str) -> str:
    first = text.strip()[:1].upper()
    return first if first in LETTERS else FAILED


def _accuracy(marks: list[bool]) -> dict:
    return {"accuracy": ratio(sum(marks), len(marks)), "n": len(marks)}


def score_seed_bench(questions: list[dict], predictions: dict[str, str],
                     scoring: Scoring = "official") -> tuple[list[Decision], dict]:
    """`questions`: records with `question_id`, `answer` (A-D), `question_type_id` and optionally `dimension`
    (its name) and `data_type` (image/video). Returns the decisions in question order and {"accuracy", "n",
    "image_accuracy", "n_image", "dimensions": {name: {"accuracy", "n"}}}."""
    check_scoring(scoring)
    parse = parse_official if scoring == "official" else parse_lmms_eval
    decisions, by_dimension, image_marks = [], {}, []
    for question in questions:
        qid, gold = str(question["question_id"]), str(question.get("answer"))
        if gold not in LETTERS:
            raise DataError(f"SEED-Bench answer must be one of A-D, got {gold!r}", reason="bad_field",
                            record_id=qid, field="answer")
        text = prediction_for(predictions, qid, "SEED-Bench")
        parsed = parse(text)
        decision = Decision(qid, text, parsed, gold, parsed == gold)
        decisions.append(decision)
        dimension = question.get("dimension") or DIMENSIONS.get(question.get("question_type_id"),
                                                                str(question.get("question_type_id")))
        by_dimension.setdefault(dimension, []).append(decision.correct)
        if question.get("data_type", "image") == "image":
            image_marks.append(decision.correct)
    overall, image = _accuracy([d.correct for d in decisions]), _accuracy(image_marks)
    return decisions, {**overall, "image_accuracy": image["accuracy"], "n_image": image["n"],
                       "dimensions": {name: _accuracy(marks) for name, marks in by_dimension.items()}}


# ---- reader ----------------------------------------------------------------------------------------------

def _load_questions(path: Path) -> tuple[list, dict[int, str]]:
    """SEED-Bench.json: {"questions": [...], "question_type": {name: id}}."""
    document = load_json_file(path, duplicate_keys_ok=True)
    questions = top_level_list(document, "questions", path)
    names = document.get("question_type") or {}
    return questions, {**DIMENSIONS, **{int(number): str(name) for name, number in names.items()}}


def _prompt(row: dict, file: str, qid: str) -> str:
    """LLaVA-1.5's llava-seed-bench.jsonl (and lmms-eval's) layout: the question, then "A. ..." to "D. ..."."""
    options = [str(required_field(row, key, file=file, record_id=qid)) for key in CHOICE_FIELDS]
    question = str(required_field(row, "question", file=file, record_id=qid))
    return question + "".join(f"\n{letter}. {option}" for letter, option in zip(LETTERS, options))


def _table_image(cell, qid: str, file: str) -> tables.ImageRef:
    """lmms-lab/SEED-Bench keeps a list of images per row: one for an image question."""
    if isinstance(cell, list):
        if len(cell) != 1:
            raise DataError(f"an image question with {len(cell)} images", reason="bad_image", file=file,
                            record_id=qid, field="image")
        cell = cell[0]
    return tables.image_ref(cell, row_id=qid)


def _record(row: dict, qid: str, image: tables.ImageRef, names: dict[int, str], file: str) -> dict:
    type_id = required_field(row, "question_type_id", file=file, record_id=qid)
    try:
        type_id = int(type_id)
    except (TypeError, ValueError):
        raise DataError(f"question_type_id {type_id!r} is not a number", reason="bad_field", file=file,
                        record_id=qid, field="question_type_id") from None
    return {"question_id": qid, "question": _prompt(row, file, qid), "image": image,
            "answer": str(required_field(row, "answer", file=file, record_id=qid)), "question_type_id": type_id,
            "dimension": names.get(type_id, str(type_id)), "data_type": "image"}


def read_seed_bench(path: str | Path, image_root: str | Path | None = None, split: str | None = None, *,
                    skipped: Counter | None = None) -> list[dict]:
    """SEED-Bench's image questions. `path`: `SEED-Bench.json`, or lmms-lab/SEED-Bench as the `datasets`
    library saves it (`split`: test). Images: the question's `data_id` relative to `image_root` (the
    SEED-Bench-image folder), or the embedded bytes. Questions of another `data_type` (video) are skipped;
    their number is logged and added to `skipped[data_type]`."""
    path, file = Path(path), str(path)
    table = tables.is_table(path)
    rows, names = (tables.read_rows(path, split), dict(DIMENSIONS)) if table else _load_questions(path)
    records, seen, others = [], set(), Counter()
    for position, row in enumerate(rows):
        qid = str(required_field(row, "question_id", file=file, record_id=f"#{position}"))
        if qid in seen:
            raise duplicate_question_id(qid, file, name_id=True)
        seen.add(qid)
        kind = str(required_field(row, "data_type", file=file, record_id=qid))
        if kind != "image":
            others[kind] += 1
            continue
        image = _table_image(row.get("image"), qid, file) if table else \
            str(required_field(row, "data_id", file=file, record_id=qid))
        records.append(_record(row, qid, image, names, file))
    if others:
        log.warning("SEED-Bench %s: skipped %s (SEED-IMG scores the %d image questions)", file,
                    ", ".join(f"{count} {kind} questions" for kind, count in sorted(others.items())), len(records))
        if skipped is not None:
            skipped.update(others)
    return records
