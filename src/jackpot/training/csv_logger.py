"""A CSV metrics logger that appends, and on resume drops the rows the checkpoint does not cover.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, which would erase
the history of a resumed run. Rows are keyed by RL step (an integer column). Logging a row
costs O(1): it is appended to the file; the file is rewritten (atomically) only when a row
brings a column the header lacks, which happens a handful of times per run (e.g. at the first
evaluation).
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
    return [{k: float(v) for k, v in row.items()} for row in _read_cells(path)[1]]


def _read_cells(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a metrics CSV as stored (text cells, empty ones dropped)."""
    if not path.is_file():
        return [], []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [{k: v for k, v in row.items() if v not in ("", None)} for row in reader]
        return list(reader.fieldnames or []), rows


class MetricsCSVLogger(Logger):
    """``run.dir/metrics.csv`` with an integer ``step`` column (the RL step) and one per key."""

    def __init__(self, directory: str | Path, resume_from_step: int | None = None) -> None:
        """Start a fresh file, or keep the rows of steps before ``resume_from_step``."""
        super().__init__()
        self.directory = Path(directory)
        self.path = self.directory / "metrics.csv"
        self._header: list[str] = []
        self._next_step = 0 if resume_from_step is None else resume_from_step
        if getattr(rank_zero_only, "rank", 0) == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            if resume_from_step is None:
                self.path.unlink(missing_ok=True)
            elif self.path.is_file():
                header, rows = _read_cells(self.path)
                kept = [r for r in rows if float(r.get("step", 0)) < resume_from_step]
                self._write(header, kept)

    @property
    def name(self) -> str:
        """Logger name (Lightning interface)."""
        return "metrics"

    @property
    def version(self) -> str:
        """No versioned sub-directories: the file lives in ``run.dir``."""
        return ""

    @property
    def save_dir(self) -> str:
        """The run directory."""
        return str(self.directory)

    @rank_zero_only
    def log_hyperparams(
        self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any
    ) -> None:
        """The resolved config is written by the CLI; nothing to do here."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Append one row; rewrite the file first when the row brings new columns."""
        row: dict[str, Any] = {**metrics, "step": int(self._next_step if step is None else step)}
        self._next_step = row["step"] + 1
        new = set(row) - set(self._header)
        if new:
            header, rows = _read_cells(self.path)
            columns = set(header) | set(row)
            self._write(["step", *sorted(columns - {"step"})], rows)
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self._header).writerow(row)

    @rank_zero_only
    def save(self) -> None:
        """Rows are written as they are logged; nothing is buffered."""

    def _write(self, header: list[str], rows: list[dict[str, str]]) -> None:
        """Rewrite the whole file atomically with ``header`` (``step`` first)."""
        self._header = ["step", *[c for c in header if c != "step"]]
        tmp = self.path.with_name(".metrics.csv.tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self._header)
            writer.writeheader()
            writer.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
