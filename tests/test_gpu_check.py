"""The GPU check's dry run (every part at tiny sizes on CPU) and its part bookkeeping."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from benchmarks.gpu import check as gpu_check
from benchmarks.gpu.check import PARTS, Context, Part, main, run_part, vllm_skip_reason


def _context(tmp_path: Path, budget_s: float = 60.0) -> Context:
    return Context(
        out=tmp_path / "out",
        work=tmp_path / "work",
        dry=True,
        sizes=gpu_check.DRY,
        deadline=time.monotonic() + budget_s,
    )


def _part(run: Any) -> Part:
    return Part(4, "speedup", "Decoupled speed-up, transformers engine", 10, 10, run)


def _saved(ctx: Context, part: Part) -> dict[str, Any]:
    return json.loads((ctx.out / f"part{part.number}_{part.key}.json").read_text())


@pytest.mark.slow
def test_dry_run_runs_every_part_and_reports_it(tmp_path: Path) -> None:
    """Parts 1-4 and 6 pass at tiny sizes on CPU; part 5 runs or says why not; times are
    reported."""
    out = tmp_path / "out"
    assert main(["--dry-run", "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    records = {
        p.number: json.loads(next(out.glob(f"part{p.number}_*.json")).read_text()) for p in PARTS
    }
    for number in (1, 2, 3, 4, 6):
        assert records[number]["status"] == "pass", records[number]
        assert records[number]["elapsed_s"] > 0
    reason = vllm_skip_reason()
    assert records[5]["status"] == ("skipped" if reason else "pass")
    assert records[5].get("reason") == reason
    fit = records[3]["result"]
    assert fit["steps"] == gpu_check.DRY["fit_steps"]
    assert all(abs(p - gpu_check.BUDGET) <= 1e-3 for p in fit["accept_prob_mean"])
    assert records[6]["result"]["steps"] == gpu_check.DRY["fit_steps"] + 1  # fit, then resume
    speed = records[4]["result"]
    assert speed["speedup"] > 0 and 0 < speed["modes"]["on_policy"]["rollout_share"] < 1
    summary = (out / "summary.md").read_text()
    assert "dry run" in summary and "On-policy step / decoupled step" in summary
    for part in PARTS:
        assert part.title in summary


def test_a_part_out_of_time_keeps_its_partial_result(tmp_path: Path) -> None:
    """A timeout is recorded with what the part had saved before it, and the summary says so."""

    def slow(ctx: Context, limit: float, save: Any) -> dict[str, Any]:
        save({"modes": {}, "runs": {}, "steps": 2, "note": "first mode done"})
        raise subprocess.TimeoutExpired(["worker"], limit, output=b"last words")

    ctx = _context(tmp_path)
    ctx.out.mkdir()
    part = _part(slow)
    record = run_part(ctx, part)
    assert record["status"] == "timeout"
    saved = _saved(ctx, part)
    assert saved["result"]["note"] == "first mode done"
    assert saved["log_tail"] == "last words"
    assert "timeout" in (ctx.out / "summary.md").read_text()


def test_a_failed_check_fails_the_part_and_a_crash_is_an_error(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    ctx.out.mkdir()
    failing = {"checks": [{"name": "finite", "ok": False, "value": float("nan"), "limit": None}]}
    assert run_part(ctx, _part(lambda c, lim, save: failing))["status"] == "fail"
    assert "FAILED: finite" in (ctx.out / "summary.md").read_text()

    def crash(ctx: Context, limit: float, save: Any) -> dict[str, Any]:
        raise RuntimeError("worker failed (rc=1): CUDA error")

    record = run_part(ctx, _part(crash))
    assert record["status"] == "error"
    assert "CUDA error" in record["log_tail"]


def test_parts_are_skipped_without_a_device_or_time(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    ctx.out.mkdir()
    ctx.records[1] = {"part": 1, "status": "error"}
    record = run_part(ctx, _part(lambda c, lim, save: {}))
    assert (record["status"], record["reason"]) == ("skipped", "part 1 found no working device")
    ctx = _context(tmp_path, budget_s=0.0)
    record = run_part(ctx, _part(lambda c, lim, save: {}))
    assert record["status"] == "skipped" and "time budget" in record["reason"]


def test_main_exits_1_when_a_part_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(ctx: Context, limit: float, save: Any) -> dict[str, Any]:
        return {"checks": [{"name": "x", "ok": False, "value": 1, "limit": 0}]}

    monkeypatch.setattr(gpu_check, "PARTS", (Part(2, "env", "X", 10, 10, fake),))
    assert main(["--dry-run", "--out", str(tmp_path), "--parts", "2"]) == 1
