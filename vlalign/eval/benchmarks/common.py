"""What every benchmark shares. Scorers: the per-sample decision record, the scoring switch, and missing
predictions. Readers: required fields, unique question ids, JSON files and lines, yes/no labels, and the
image file suffixes they look for; each error names the file, the record and the field."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vlalign.errors import DataError

Scoring = Literal["official", "lmms-eval"]
SCORINGS = ("official", "lmms-eval")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class Decision:
    question_id: str
    prediction: str  # the model's text, as written
    parsed: str  # what the scorer read it as ("yes", "no", "other", a letter, ...)
    gold: str
    correct: bool


def check_scoring(scoring: str) -> None:
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")


def prediction_for(predictions: dict[str, str], question_id: str, benchmark: str) -> str:
    """The prediction of one question; a question without one is an error naming it (the official scripts
    would silently misalign or crash)."""
    key = str(question_id)
    if key not in predictions:
        raise DataError(f"no prediction for {benchmark} question {key!r}", reason="missing_prediction",
                        record_id=key, field="question_id")
    return predictions[key]


def ratio(numerator: int, denominator: int) -> float:
    """numerator / denominator, 0.0 where the denominator is 0 (the official scripts divide by zero there;
    no NaN is ever saved)."""
    return numerator / denominator if denominator else 0.0


# ---- readers ---------------------------------------------------------------------------------------------

def required_field(row, name: str, file: str | Path, record_id: str):
    """row[name]; a row without it (None counts as without, and so does a row that is no object) is an
    error naming the file, the record and the field."""
    if not isinstance(row, dict) or row.get(name) is None:
        raise DataError(f"no {name!r}", reason="missing_field", file=str(file), record_id=record_id, field=name)
    return row[name]


def duplicate_question_id(question_id: str, file: str | Path, *, field: str = "question_id",
                          name_id: bool = False) -> DataError:
    """The error for a question id met a second time. `field`: the column the id comes from (MMBench's is
    "index"); `name_id`: repeat the id in the message (the record prefix names it either way)."""
    message = f"question id {question_id!r} appears twice" if name_id else "this question id appears twice"
    return DataError(message, reason="duplicate_id", file=str(file), record_id=question_id, field=field)


def unique_question_ids(records: list[dict], file: str | Path, *, field: str = "question_id",
                        name_id: bool = False) -> list[dict]:
    """`records` as they are, once no two share a `question_id` (a prediction file could not tell them
    apart); else the error of `duplicate_question_id`."""
    seen = set()
    for record in records:
        if record["question_id"] in seen:
            raise duplicate_question_id(record["question_id"], file, field=field, name_id=name_id)
        seen.add(record["question_id"])
    return records


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple]) -> dict:
    """json.load keeps the last of two equal keys silently; a key (a pid, a question id) given twice is an
    error instead."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)
    return dict(pairs)


def load_json_file(file: Path, *, missing_hint: str = "", duplicate_keys_ok: bool = False):
    """The JSON document in `file`. A missing file, text that is not UTF-8 JSON, and (unless
    `duplicate_keys_ok`) a key given twice in one object are errors naming the file; `missing_hint` says
    what to give instead of a missing file."""
    if not file.is_file():
        raise DataError(f"no such file ({missing_hint})" if missing_hint else "no such file",
                        reason="missing_file", file=str(file))
    try:
        return json.loads(file.read_text(encoding="utf-8"),
                          object_pairs_hook=None if duplicate_keys_ok else _no_duplicate_keys)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"not JSON ({exc})", reason="bad_json", file=str(file)) from exc
    except _DuplicateKey as exc:
        raise DataError("this key appears twice in one JSON object", reason="duplicate_id", file=str(file),
                        record_id=str(exc.args[0])) from exc


def top_level_list(document, key: str, file: str | Path) -> list:
    """document[key], which must be a list (VQAv2's "questions", TextVQA's "data", SEED-Bench's "questions")."""
    value = document.get(key) if isinstance(document, dict) else None
    if not isinstance(value, list):
        raise DataError(f"no {key!r} list at the top level", reason="missing_field", file=str(file), field=key)
    return value


def json_object_line(line: str, number: int, file: str | Path) -> dict:
    """Line `number` (from 1) of a JSON-lines file, which must hold one JSON object."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"line {number} is not JSON ({exc.msg})", reason="bad_json", file=str(file)) from exc
    if not isinstance(row, dict):
        raise DataError(f"line {number} is not a JSON object", reason="bad_record", file=str(file))
    return row


def yes_or_no(value, file: str | Path, record_id: str, field: str, *, spelled: str = "yes or no") -> str:
    """A gold yes/no label, lower-cased and stripped; anything else is an error. `spelled`: how the message
    writes the two words (MME's files say "Yes" / "No")."""
    label = str(value).lower().strip()
    if label not in ("yes", "no"):
        raise DataError(f"{field} must be {spelled}, got {value!r}", reason="bad_label", file=str(file),
                        record_id=record_id, field=field)
    return label
