"""Predictions in LLaVA's answers format: one JSON object per line with `question_id` and `text` (LLaVA's
`model_vqa*.py` also write `prompt`, `answer_id`, `model_id`, `metadata`; vlalign writes `prompt` and
`model_id`). The same file is what `eval benchmarks` appends to as it answers, so an interrupted run
resumes where it stopped, and what `eval score` reads."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vlalign.errors import DataError
from vlalign.eval.benchmarks.common import json_object_line


def _parse_line(line: str, number: int, path: Path) -> dict:
    row = json_object_line(line, number, path)
    for key in ("question_id", "text"):
        if key not in row:
            raise DataError(f"line {number} has no {key!r}", reason="missing_field", file=str(path), field=key)
    if not isinstance(row["text"], str):
        raise DataError(f"line {number}: 'text' must be a string", reason="bad_field", file=str(path),
                        field="text")
    return row


def read_answers(path: str | Path, *, torn_tail_ok: bool = False) -> dict[str, dict]:
    """Rows by question id (as str). `torn_tail_ok`: a last line without its newline is a write that a kill
    interrupted; it is ignored (and re-answered) instead of being an error. A question id answered twice
    is an error naming it: which answer counts would be a guess."""
    path = Path(path)
    if not path.is_file():
        raise DataError("no such predictions file", reason="missing_file", file=str(path))
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if torn_tail_ok and not text.endswith("\n"):
        lines = lines[:-1]
    rows: dict[str, dict] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = _parse_line(line, number, path)
        key = str(row["question_id"])
        if key in rows:
            raise DataError(f"question {key!r} is answered twice (line {number})", reason="duplicate_id",
                            file=str(path), record_id=key)
        rows[key] = row
    return rows


def read_predictions(path: str | Path) -> dict[str, str]:
    """question id -> the model's text, from an answers file."""
    return {key: row["text"] for key, row in read_answers(path).items()}


def drop_torn_tail(path: Path) -> None:
    """Cut a last line that a kill left without its newline, so appends start on a fresh line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with path.open("r+b") as handle:
            handle.truncate(keep)


def append_answers(path: Path, rows: list[dict]) -> None:
    """Append rows and make them durable before the next batch starts: what is on disk is never lost."""
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
