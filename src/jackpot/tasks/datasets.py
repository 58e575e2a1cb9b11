"""Local prompt/answer datasets from JSONL or Parquet files (never downloaded).

Each record needs a prompt field and an answer field, whose names are configurable
(``"problem"`` / ``"solution"`` in many math sets), each a string or a number (converted with
``str``); prompts must not be blank. Errors name the file, the record and what was found.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from jackpot.errors import describe
from jackpot.tasks.synthetic import Example

__all__ = ["DatasetFormatError", "load_examples", "load_jsonl", "load_parquet"]


class DatasetFormatError(ValueError):
    """A dataset file cannot be read as prompt/answer records."""


PromptCheck = Callable[[str], None]
"""Raises ``ValueError`` saying why a prompt cannot be used (e.g. too long for the model)."""


def _to_example(
    record: Any, where: str, prompt_field: str, answer_field: str, check: PromptCheck | None
) -> Example:
    """One record -> :class:`Example`, or an error naming the field and what is wrong with it."""
    if not isinstance(record, Mapping):
        raise DatasetFormatError(f"{where}: expected a JSON object, found {type(record).__name__}")
    for name in (prompt_field, answer_field):
        if name not in record or record[name] is None:
            raise DatasetFormatError(
                f"{where}: missing field {name!r}; fields found: {sorted(record)} "
                "(set prompt_field / answer_field)"
            )
        value = record[name]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise DatasetFormatError(
                f"{where}: field {name!r} is a {type(value).__name__}; it must be a string "
                "(or a number)"
            )
    prompt = str(record[prompt_field])
    if not prompt.strip():
        raise DatasetFormatError(
            f"{where}: field {prompt_field!r} is blank; every prompt needs text"
        )
    if check is not None:
        try:
            check(prompt)
        except ValueError as exc:
            raise DatasetFormatError(f"{where}: {exc}") from None
    return Example(prompt=prompt, answer=str(record[answer_field]))


def _existing(path: str | Path) -> Path:
    """``path`` as an existing file, or ``FileNotFoundError`` naming it."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"dataset file {str(file)!r} does not exist")
    return file


def _collect(
    file: Path,
    records: Iterable[tuple[str, Any]],
    prompt_field: str,
    answer_field: str,
    check: PromptCheck | None,
) -> list[Example]:
    """Convert ``(location, record)`` pairs; a file without records is an error."""
    examples = [
        _to_example(rec, where, prompt_field, answer_field, check) for where, rec in records
    ]
    if not examples:
        raise DatasetFormatError(f"{file} holds no records; give it prompt/answer records")
    return examples


def load_jsonl(
    path: str | Path,
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    check: PromptCheck | None = None,
) -> list[Example]:
    """One JSON object per line (blank lines skipped), UTF-8; ``check`` vets each prompt."""
    file = _existing(path)
    records: list[tuple[str, Any]] = []
    try:
        with file.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    records.append((f"{file}:{number}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise DatasetFormatError(
                        f"{file}:{number}: invalid JSON ({err.msg}); a .jsonl file holds one "
                        "JSON object per line"
                    ) from None
    except UnicodeDecodeError:
        raise DatasetFormatError(
            f"{file} is not UTF-8 text; a .jsonl file holds one JSON object per line"
        ) from None
    return _collect(file, records, prompt_field, answer_field, check)


def load_parquet(
    path: str | Path,
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    check: PromptCheck | None = None,
) -> list[Example]:
    """A Parquet table with a prompt column and an answer column (read with pyarrow)."""
    file = _existing(path)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetFormatError(
            f"{file}: reading Parquet needs pyarrow: pip install pyarrow (or convert the file "
            "to .jsonl)"
        ) from None
    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetFormatError(
            f"{file} is not a readable Parquet file ({describe(exc)}); write it with "
            "pandas.DataFrame.to_parquet or pyarrow"
        ) from None
    missing = [name for name in (prompt_field, answer_field) if name not in table.column_names]
    if missing:
        raise DatasetFormatError(
            f"{file}: missing column(s) {missing}; columns found: {table.column_names} "
            "(set prompt_field / answer_field)"
        )
    rows = table.select([prompt_field, answer_field]).to_pylist()
    located = ((f"{file} row {i}", row) for i, row in enumerate(rows))
    return _collect(file, located, prompt_field, answer_field, check)


def load_examples(
    path: str | Path,
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    check: PromptCheck | None = None,
) -> list[Example]:
    """Load ``.jsonl`` / ``.json`` (one object per line) or ``.parquet`` by file suffix;
    ``check`` vets each prompt (its ``ValueError`` becomes an error naming the record)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json"):
        return load_jsonl(path, prompt_field, answer_field, check)
    if suffix == ".parquet":
        return load_parquet(path, prompt_field, answer_field, check)
    raise DatasetFormatError(f"{path}: unknown dataset suffix {suffix!r}; use .jsonl or .parquet")
