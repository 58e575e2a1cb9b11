"""The benchmark's pure summary and report code on a hand-made result (no timing, no torch)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from benchmarks.e2e import KEYS, amdahl, summarize
from benchmarks.report import render, targets


def _e2e_run(step_s: list[float], share: float, sampler_s: float) -> dict[str, Any]:
    """A worker result of ``len(step_s)`` steps: rollout share ``share``, one sampler call each."""
    n = len(step_s)
    per_step = {key: [1.0] * n for key in KEYS}
    per_step["perf/step_s"] = step_s
    per_step["perf/rollout_share"] = [share] * n
    per_step["response/length"] = [60.0] * n
    per_step["response/truncated_frac"] = [0.5] * n
    return {"wall_s": 10.0, "per_step": per_step, "sampler_s": [99.0] + [sampler_s] * (n - 1)}


def _e2e() -> dict[str, Any]:
    """Section 3 summary: on-policy 4 s (half rollout), decoupled 2.5 s (0.05 s OBRS)."""
    per_mode = {
        # The 99 s first step (and its sampler call) is warm-up and must be dropped.
        "on_policy": [_e2e_run([99.0, 4.0, 4.0, 4.0], 0.5, 0.001)],
        "decoupled": [_e2e_run([99.0, 2.5, 2.5, 2.5], 0.2, 0.05)],
    }
    return {
        "policy": [512, 6, 8],
        "rollout": [128, 2, 4],
        "rows": 64,
        "vocab": 51,
        "max_new_tokens": 64,
        "overrides": ["warmstart.steps=0"],
        "modes_desc": {"on_policy": "a", "decoupled": "b"},
        "steps": 4,
        "runs": 1,
        "warmup_steps": 1,
        "loadavg": [1.0, 1.5],
        "elapsed_s": 100.0,
        **summarize(per_mode),
    }


def _results(topk_extra_mib: float) -> dict[str, Any]:
    """A whole run: one normaliser size, one overhead point that ran and one skipped."""
    variants = [
        {"name": name, "desc": name, "time_s": t, "time_ratio": t, "extra_peak_mib": mib}
        for name, t, mib in [("full", 1.0, 1000.0), ("topk_z_only", 0.1, topk_extra_mib)]
    ]
    for v in variants:
        v["mem_ratio"] = v["extra_peak_mib"] / 1000.0
    sampler = {"sampler_s": 0.05, "total_s": 1.05, "ratio": 1.05, "stats": {}}
    samplers = [
        {**sampler, "name": "obrs_exact", "sampler_over_baseline": 0.5},
        {**sampler, "name": "obrs_topk", "sampler_over_baseline": 0.05},
    ]
    grid = [
        {"vocab": 32000, "rows": 4096, "baseline_s": 1.0, "samplers": samplers},
        {"vocab": 152064, "rows": 16384, "skipped": "needs ~46 GiB"},
    ]
    return {
        "quick": False,
        "machine": {
            "date": "2026-01-01",
            "cores": 2,
            "mem_total_gib": 23.5,
            "torch": "2.13.0",
            "torch_threads": 2,
            "python": "3.11",
            "loadavg_start": [1.0, 1.0, 1.0],
        },
        "loadavg_end": [2.0, 2.0, 2.0],
        "elapsed_s": 600.0,
        "normalizer": {
            "rows": 8192,
            "vocab": 32000,
            "k": 20,
            "repeats": 3,
            "runs": 3,
            "logits_mib": 1000.0,
            "topk_store_mib": 5.0,
            "variants": variants,
            "loadavg": [1.0, 1.5],
            "elapsed_s": 100.0,
        },
        "overhead": {
            "seq_len": 512,
            "topk": 20,
            "budget": 0.95,
            "repeats": 3,
            "grid": grid,
            "loadavg": [1.0, 1.5],
            "elapsed_s": 100.0,
        },
        "e2e": _e2e(),
    }


def test_e2e_summary_drops_warmup_and_takes_ratios_against_on_policy() -> None:
    e2e = _e2e()
    on, dec = e2e["modes"]["on_policy"], e2e["modes"]["decoupled"]
    assert on["steps_kept"] == 3
    assert on["step_s"] == pytest.approx(4.0)
    assert on["rollout_s"] == pytest.approx(2.0) and dec["rollout_s"] == pytest.approx(0.5)
    assert e2e["speedup"] == pytest.approx(1.6)
    assert e2e["rollout_speedup"] == pytest.approx(4.0)
    assert e2e["amdahl_measured_share"] == pytest.approx(amdahl(0.5, 4.0)) == pytest.approx(1.6)
    assert e2e["obrs_share"] == pytest.approx(0.05 / 2.5)


def test_targets_are_met_or_missed_from_the_measured_figures() -> None:
    met = {t["target"]: t["met"] for t in targets(_results(topk_extra_mib=20.0))}
    assert list(met.values()) == [True, True, False]  # overhead 2 %, 4x store, 1.6x < 2x
    assert targets(_results(topk_extra_mib=500.0))[1]["met"] is False
    assert math.isfinite(targets(_results(20.0))[0]["value"])


def test_report_has_every_section_the_targets_and_the_skipped_point() -> None:
    results = _results(topk_extra_mib=20.0)
    results["targets"] = targets(results)
    md = render(results)
    for text in ("## Targets", "## 1.", "## 2.", "## 3.", "**met**", "**missed**", "1.60x"):
        assert text in md
    assert "V = 152064, B·T = 16384: skipped, needs ~46 GiB" in md
    assert md.count("load average 1.0 -> 1.5") == 3
    sections = md.split("\n## ")[1:]
    rows = [sum(line.startswith("| ") for line in sec.splitlines()) - 2 for sec in sections]
    assert rows == [3, 2, 2, 2]  # targets, normaliser variants, samplers, e2e modes
