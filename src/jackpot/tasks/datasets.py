"""Local prompt/answer datasets from JSONL or Parquet files (never downloaded).

Each record needs a prompt field and an answer field, whose names are configurable
(``"problem"`` / ``"solution"`` in many math sets). Non-string answers (numbers) are
converted with ``str``. Errors name the file, the record and the fields that were found.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jackpot.tasks.synthetic import Example

__all__ = ["DatasetFormatError", "load_examples", "load_jsonl", "load_parquet"]


class DatasetFormatError(ValueError):
    """A dataset file cannot be read as prompt/answer records."""


def _to_example(record: Any, where: str, prompt_field: str, answer_field: str) -> Example:
    """One record -> :class:`Example`, or an error naming the missing field."""
    if not isinstance(record, Mapping):
        raise DatasetFormatError(f"{where}: expected a JSON object, found {type(record).__name__}")
    for name in (prompt_field, answer_field):
        if name not in record or record[name] is None:
            raise DatasetFormatError(
                f"{where}: missing field {name!r}; fields found: {sorted(record)} "
                "(set prompt_field / answer_field)"
            )
    return Example(prompt=str(record[prompt_field]), answer=str(record[answer_field]))


def _existing(path: str | Path) -> Path:
    """``path`` as an existing file, or ``FileNotFoundError`` naming it."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"dataset file {str(file)!r} does not exist")
    return file


def _collect(
    records: Iterable[tuple[str, Any]], prompt_field: str, answer_field: str
) -> list[Example]:
    """Convert ``(location, record)`` pairs."""
    return [_to_example(rec, where, prompt_field, answer_field) for where, rec in records]


def load_jsonl(
    path: str | Path, prompt_field: str = "prompt", answer_field: str = "answer"
) -> list[Example]:
    """One JSON object per line (blank lines skipped)."""
    file = _existing(path)
    records: list[tuple[str, Any]] = []
    with file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append((f"{file}:{number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise DatasetFormatError(f"{file}:{number}: invalid JSON ({err.msg})") from None
    return _collect(records, prompt_field, answer_field)


def load_parquet(
    path: str | Path, prompt_field: str = "prompt", answer_field: str = "answer"
) -> list[Example]:
    """A Parquet table with a prompt column and an answer column (read with pyarrow)."""
    import pyarrow.parquet as pq

    file = _existing(path)
    table = pq.read_table(file)
    missing = [name for name in (prompt_field, answer_field) if name not in table.column_names]
    if missing:
        raise DatasetFormatError(
            f"{file}: missing column(s) {missing}; columns found: {table.column_names} "
            "(set prompt_field / answer_field)"
        )
    rows = table.select([prompt_field, answer_field]).to_pylist()
    return _collect(
        ((f"{file} row {i}", row) for i, row in enumerate(rows)), prompt_field, answer_field
    )


def load_examples(
    path: str | Path, prompt_field: str = "prompt", answer_field: str = "answer"
) -> list[Example]:
    """Load ``.jsonl`` / ``.json`` (one object per line) or ``.parquet`` by file suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json"):
        return load_jsonl(path, prompt_field, answer_field)
    if suffix == ".parquet":
        return load_parquet(path, prompt_field, answer_field)
    raise DatasetFormatError(f"{path}: unknown dataset suffix {suffix!r}; use .jsonl or .parquet")
