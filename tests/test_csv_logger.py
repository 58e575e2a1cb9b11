"""The metrics CSV logger: appends rows, rewrites only for new columns, resumes, integer steps."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from jackpot.training.csv_logger import MetricsCSVLogger, read_metrics


def _lines(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_rows_are_appended_without_rewriting_the_file(tmp_path: Path) -> None:
    logger = MetricsCSVLogger(tmp_path)
    logger.log_metrics({"a": 1.0, "b": 2.0}, step=0)
    inode = logger.path.stat().st_ino
    for step in range(1, 5):
        logger.log_metrics({"a": float(step), "b": 0.5}, step=step)
    assert logger.path.stat().st_ino == inode  # an append, not an atomic replace
    assert _lines(logger.path) == [
        ["step", "a", "b"],
        ["0", "1.0", "2.0"],
        *[[str(s), f"{float(s)}", "0.5"] for s in range(1, 5)],
    ]


def test_a_new_column_rewrites_the_file_and_keeps_earlier_rows(tmp_path: Path) -> None:
    logger = MetricsCSVLogger(tmp_path)
    logger.log_metrics({"b": 1.0}, step=0)
    inode = logger.path.stat().st_ino
    logger.log_metrics({"b": 2.0, "a": 3.0}, step=1)  # new column "a"
    assert logger.path.stat().st_ino != inode
    logger.log_metrics({"b": 4.0}, step=2)  # a subset of the columns: appended, "a" left empty
    assert _lines(logger.path) == [
        ["step", "a", "b"],
        ["0", "", "1.0"],
        ["1", "3.0", "2.0"],
        ["2", "", "4.0"],
    ]
    assert read_metrics(logger.path) == [
        {"step": 0.0, "b": 1.0},
        {"step": 1.0, "a": 3.0, "b": 2.0},
        {"step": 2.0, "b": 4.0},
    ]


def test_step_is_an_integer_column(tmp_path: Path) -> None:
    logger = MetricsCSVLogger(tmp_path)
    logger.log_metrics({"x": 0.25}, step=7)
    logger.log_metrics({"x": 0.5})  # no step given: the next one
    assert [row[0] for row in _lines(logger.path)] == ["step", "7", "8"]


def test_resume_drops_the_rows_at_and_after_the_resume_step(tmp_path: Path) -> None:
    first = MetricsCSVLogger(tmp_path)
    for step in range(5):
        first.log_metrics({"x": float(step), **({"eval": 1.0} if step == 3 else {})}, step=step)
    resumed = MetricsCSVLogger(tmp_path, resume_from_step=3)
    assert [r["step"] for r in read_metrics(resumed.path)] == [0.0, 1.0, 2.0]
    resumed.log_metrics({"x": 30.0}, step=3)
    resumed.log_metrics({"x": 40.0, "eval": 2.0}, step=4)
    rows = read_metrics(resumed.path)
    assert [r["step"] for r in rows] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert rows[3] == {"step": 3.0, "x": 30.0}
    assert rows[4] == {"step": 4.0, "x": 40.0, "eval": 2.0}


def test_resume_without_a_file_starts_one_and_a_fresh_run_deletes_the_old(tmp_path: Path) -> None:
    resumed = MetricsCSVLogger(tmp_path, resume_from_step=2)
    assert not resumed.path.exists()
    resumed.log_metrics({"x": 1.0}, step=2)
    assert read_metrics(resumed.path) == [{"step": 2.0, "x": 1.0}]
    MetricsCSVLogger(tmp_path)
    assert not resumed.path.exists()


def test_resume_reads_files_written_with_float_steps(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text("step,x\n0.0,1.0\n1.0,2.0\n2.0,3.0\n")
    logger = MetricsCSVLogger(tmp_path, resume_from_step=2)
    logger.log_metrics({"x": 9.0}, step=2)
    assert read_metrics(logger.path) == [
        {"step": 0.0, "x": 1.0},
        {"step": 1.0, "x": 2.0},
        {"step": 2.0, "x": 9.0},
    ]


@pytest.mark.parametrize("rows", [20, 2000])
def test_logging_known_columns_does_not_read_the_file(
    tmp_path: Path, rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = MetricsCSVLogger(tmp_path)
    for step in range(rows):
        logger.log_metrics({"x": 1.0}, step=step)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("log_metrics read the metrics file back")

    monkeypatch.setattr("jackpot.training.csv_logger._read_cells", fail)
    logger.log_metrics({"x": 2.0}, step=rows)
    monkeypatch.undo()
    assert len(read_metrics(logger.path)) == rows + 1
