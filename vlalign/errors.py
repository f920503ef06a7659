"""Error types that carry where the bad input is, so the CLI can print one clear line."""

from __future__ import annotations


class VlalignError(Exception):
    """Base class: anything the user can fix (bad data, bad config, unloadable model)."""


class ConfigError(VlalignError):
    pass


class ModelSourceError(VlalignError):
    pass


class TrainingError(VlalignError):
    """A run that cannot go on without training on garbage (a non-finite loss or gradient)."""


class DataError(VlalignError):
    """A record that cannot be used. `reason` is a short stable key used to count skips."""

    def __init__(self, message: str, *, reason: str, record_id: str | None = None,
                 file: str | None = None, field: str | None = None):
        where = []
        if file is not None:
            where.append(f"file {file}")
        if record_id is not None:
            where.append(f"record {record_id!r}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.reason = reason
        self.record_id = record_id
        self.file = file
        self.field = field
