"""LLaVA JSON records (LLaVA-Pretrain 558K, LLaVA-665K): read, validate, name every problem.

A record is `{id, image?, conversations: [{from: human|gpt, value}, ...]}`; image paths are relative to
an image root; records without `image` are text-only. `.json` (one array) and `.jsonl` are accepted.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vlalign.errors import DataError

ROLES = {"human": "user", "gpt": "assistant"}


@dataclass(frozen=True)
class Turn:
    role: str  # "user" | "assistant"
    text: str


@dataclass(frozen=True)
class Record:
    id: str
    image: Path | None
    turns: tuple[Turn, ...]
    source_file: str
    # The record's `image` string as written in the JSON (relative to the image root): the key under which
    # per-image caches (SEA patch labels, ground truth) are stored.
    image_key: str | None = None

    @property
    def text_length(self) -> int:
        return sum(len(turn.text) for turn in self.turns)


@dataclass
class SkipReport:
    """What a `skip` policy dropped: each distinct (reason, file, record) once, however many epochs or
    ranks met it, so the counts are records, not encounters."""

    entries: dict[tuple[str, str, str], str] = field(default_factory=dict)  # key -> message

    def add(self, error: DataError) -> None:
        key = (error.reason, error.file or "", error.record_id or str(error))
        self.entries.setdefault(key, str(error))

    def merge(self, other: "SkipReport") -> None:
        for key, message in other.entries.items():
            self.entries.setdefault(key, message)

    @property
    def counts(self) -> Counter:
        return Counter(reason for reason, _, _ in self.entries)

    @property
    def examples(self) -> dict[str, list[str]]:
        examples: dict[str, list[str]] = {}
        for (reason, _, _), message in sorted(self.entries.items()):
            if len(examples.setdefault(reason, [])) < 3:
                examples[reason].append(message)
        return examples

    @property
    def total(self) -> int:
        return len(self.entries)

    def summary(self) -> str:
        if not self.total:
            return "no records skipped"
        parts = [f"{reason}: {count}" for reason, count in sorted(self.counts.items())]
        return f"skipped {self.total} records ({', '.join(parts)})"


def _read_raw(path: Path) -> list[tuple[int, object]]:
    """(position, raw record) pairs; a file that cannot be parsed at all is always an error."""
    if not path.is_file():
        raise DataError("data file does not exist", reason="missing_file", file=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text: {exc}", reason="corrupt_json", file=str(path)) from None
    if path.suffix == ".jsonl":
        rows = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((line_number, json.loads(line)))
                except json.JSONDecodeError as exc:
                    rows.append((line_number, DataError(f"corrupt JSON on line {line_number}: {exc.msg}",
                                                        reason="corrupt_json", file=str(path))))
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"corrupt JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                        reason="corrupt_json", file=str(path)) from None
    if not isinstance(data, list):
        raise DataError("expected a JSON array of records", reason="corrupt_json", file=str(path))
    return list(enumerate(data))


def parse_record(raw: object, position: int, file: str, image_root: Path | None,
                 image_token: str = "<image>") -> Record:
    if not isinstance(raw, dict):
        raise DataError("record is not a JSON object", reason="bad_record", record_id=f"#{position}", file=file)
    record_id = raw.get("id")
    if record_id is None or str(record_id) == "":
        raise DataError("record has no id", reason="bad_record", record_id=f"#{position}", file=file, field="id")
    record_id = str(record_id)

    def fail(message: str, reason: str, field_name: str | None = None):
        raise DataError(message, reason=reason, record_id=record_id, file=file, field=field_name)

    conversations = raw.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        fail("record has no conversations", "no_conversations", "conversations")
    turns = []
    for index, turn in enumerate(conversations):
        where = f"conversations[{index}]"
        if (not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or turn["from"] not in ROLES
                or not isinstance(turn.get("value"), str)):
            fail("each turn needs 'from' (human|gpt) and a string 'value'", "bad_turn", where)
        expected = "human" if index % 2 == 0 else "gpt"
        if turn["from"] != expected:
            fail(f"turns must alternate human, gpt, ...; got {turn['from']!r} at turn {index}", "bad_turn", where)
        if turn["from"] == "gpt" and not turn["value"].strip():
            fail("the gpt answer is empty: the model would learn to end its turn at once", "empty_answer", where)
        turns.append(Turn(ROLES[turn["from"]], turn["value"]))
    if len(turns) < 2:
        fail("record has no gpt turn to learn from", "no_conversations", "conversations")

    image = raw.get("image")
    tag_count = sum(turn.text.count(image_token) for turn in turns)
    tags_in_answers = sum(turn.text.count(image_token) for turn in turns if turn.role == "assistant")
    expected_tags = 1 if image is not None else 0
    if tag_count != expected_tags or tags_in_answers:
        fail(f"expected {expected_tags} {image_token} tag(s) in the human turns, found {tag_count} "
             f"({tags_in_answers} in gpt turns)", "image_tag_count", "conversations")
    image_path = None
    if image is not None:
        if not isinstance(image, str) or not image:
            fail("'image' must be a relative path string", "missing_image", "image")
        image_path = (image_root / image) if image_root is not None else Path(image)
        if not image_path.is_file():
            fail(f"image file {image_path} does not exist", "missing_image", "image")
    return Record(record_id, image_path, tuple(turns), file, image if image_path is not None else None)


def load_records(path: str | Path, image_root: str | Path | None, on_error: str = "raise",
                 skips: SkipReport | None = None, image_token: str = "<image>") -> list[Record]:
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    records, first_seen = [], {}  # record id -> position of its first occurrence
    skipped = SkipReport()  # this file's own skips, for the "no usable records" message
    rows = _read_raw(path)
    for position, raw in rows:
        try:
            if isinstance(raw, DataError):
                raise raw
            record_id = raw.get("id") if isinstance(raw, dict) else None
            if record_id is not None and str(record_id) in first_seen:
                # Ids name records in errors, skip reports and the SEA label cache: they must be unique.
                raise DataError(f"the id is used again (first at record #{first_seen[str(record_id)]})",
                                reason="duplicate_id", record_id=f"{record_id} (#{position})", file=str(path),
                                field="id")
            if record_id is not None:
                first_seen[str(record_id)] = position
            records.append(parse_record(raw, position, str(path), root, image_token))
        except DataError as error:
            if on_error != "skip":
                raise
            skipped.add(error)
            if skips is not None:
                skips.add(error)
    if not records:
        why = f"all {len(rows)} were skipped: {skipped.summary()}" if rows else "the file holds none"
        raise DataError(f"no usable records ({why})", reason="empty", file=str(path))
    return records
