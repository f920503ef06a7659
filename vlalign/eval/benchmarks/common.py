"""What every scorer shares: the per-sample decision record, the scoring switch, and missing predictions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlalign.errors import DataError

Scoring = Literal["official", "lmms-eval"]
SCORINGS = ("official", "lmms-eval")


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
