"""A CSV metrics logger that appends, and on resume drops the rows the checkpoint does not cover.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, which would erase
the history of a resumed run. Rows are keyed by RL step; the file is rewritten (atomically)
only when new columns appear.
"""

from __future__ import annotations

import csv
import os
from argparse import Namespace
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["MetricsCSVLogger", "read_metrics"]


def read_metrics(path: Path) -> list[dict[str, float]]:
    """Rows of a metrics CSV as floats (empty cells dropped)."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [
            {k: float(v) for k, v in row.items() if v not in ("", None)}
            for row in csv.DictReader(handle)
        ]


class MetricsCSVLogger(Logger):
    """``run.dir/metrics.csv`` with a ``step`` column (the RL step) and one column per key."""

    def __init__(self, directory: str | Path, resume_from_step: int | None = None) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.path = self.directory / "metrics.csv"
        self._rows: list[dict[str, float]] = []
        if getattr(rank_zero_only, "rank", 0) == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            if resume_from_step is None:
                self.path.unlink(missing_ok=True)
            else:
                kept = [r for r in read_metrics(self.path) if r.get("step", 0) < resume_from_step]
                self._write(kept)

    @property
    def name(self) -> str:
        return "metrics"

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self.directory)

    @rank_zero_only
    def log_hyperparams(
        self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any
    ) -> None:
        """The resolved config is written by the CLI; nothing to do here."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Buffer one row and append it to the file."""
        self._rows.append({"step": float(step if step is not None else len(self._rows)), **metrics})
        self.save()

    @rank_zero_only
    def save(self) -> None:
        """Append buffered rows; rewrite the file when a new column appears."""
        if not self._rows:
            return
        existing = read_metrics(self.path)
        header = self._header(existing)
        if set(header) - set(self._file_header()):
            self._write(existing + self._rows)
        else:
            with open(self.path, "a", newline="") as handle:
                csv.DictWriter(handle, fieldnames=header).writerows(self._rows)
                handle.flush()
                os.fsync(handle.fileno())
        self._rows = []

    def _file_header(self) -> list[str]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as handle:
            return next(csv.reader(handle), [])

    def _header(self, existing: list[dict[str, float]]) -> list[str]:
        keys = set(self._file_header())
        for row in existing + self._rows:
            keys.update(row)
        return ["step", *sorted(keys - {"step"})]

    def _write(self, rows: list[dict[str, float]]) -> None:
        """Rewrite the whole file atomically."""
        header = ["step", *sorted({k for r in rows for k in r} - {"step"})]
        tmp = self.path.with_name(".metrics.csv.tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
