"""The benchmark's pure summary and report code on a hand-made result (no timing, no torch)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from benchmarks import decode, memory
from benchmarks.assets import AssetSpec, build_assets, build_tokenizer
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
        "decode": {
            "points": [
                {
                    "sizes": {"hidden": 128, "layers": 2, "prompts": 8, "group": 8, "tokens": 16},
                    "variants": {
                        name: {"median_s": 0.04 / ratio, "ratio": ratio}
                        for name, ratio in zip(decode.VARIANTS, (1.0, 1.1, 0.9), strict=True)
                    },
                }
            ],
            "repeats": 15,
            "loadavg": [1.0, 1.5],
            "elapsed_s": 10.0,
        },
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
    for text in ("## Targets", "## 1.", "## 2.", "## 3.", "## 4.", "**met**", "**missed**"):
        assert text in md
    assert "1.60x" in md and "| engine: prefill per prompt | 36.36 | 1.10x |" in md
    assert "V = 152064, B·T = 16384: skipped, needs ~46 GiB" in md
    assert md.count("load average 1.0 -> 1.5") == 4
    sections = md.split("\n## ")[1:]
    rows = [sum(line.startswith("| ") for line in sec.splitlines()) - 2 for sec in sections]
    assert rows == [3, 2, 2, 2, 3]  # targets, normaliser variants, samplers, e2e, decode


# ----------------------------------------------------------------------------- memory section


def _mem_point(n: int, peak: float) -> dict[str, Any]:
    return {
        "n": n,
        "peak_rss_mib": peak,
        "parent_peak_mib": 15.0,
        "step_s": n / 8,
        "response_length": 32.0,
        "loadavg": [2.0, 3.0],
        "available_mib": 20000.0,
    }


def _mem_result() -> dict[str, Any]:
    """New path at every size; old path measured at 32 and 64, skipped at 128, not run at 256."""
    results = {
        "new": [_mem_point(32, 1000.0), _mem_point(64, 1100.0), _mem_point(128, 1200.0)],
        "old": [_mem_point(32, 3000.0), _mem_point(64, 6000.0)],
    }
    results["new"].append(_mem_point(256, 1400.0))
    results["old"].append({"n": 128, "skipped": "needs 12 GiB"})
    return {
        "sizes": [32, 64, 128, 256],
        "new_tokens": 32,
        "steps": 1,
        "warmup_steps": 1,
        "vocab": 151_936,
        "group_size": 8,
        "micro_batch_size": 8,
        "assets": {
            "spec": {"policy": [64, 2, 4], "rollout": [32, 2, 2]},
            "tokenizer_len": 151_936,
            "tokenizer_class": "Qwen2Tokenizer",
            "prompt_tokens": [8, 8],
        },
        "overrides": ["algo.mode=decoupled"],
        "code": {"new": {"commit": "a" * 40, "dirty": False}, "old": {"commit": "b" * 40}},
        **memory.summarize(results),
    }


def test_memory_extrapolates_peaks_linearly_and_proportionally_from_one_point() -> None:
    assert math.isnan(memory.predict_peak([], 64))
    assert memory.predict_peak([(32, 1000.0)], 64) == pytest.approx(2000.0)
    assert memory.predict_peak([(32, 3000.0), (64, 6000.0)], 128) == pytest.approx(12000.0)


def test_memory_summary_ratios_and_goal_at_the_largest_n() -> None:
    res = _mem_result()
    new = res["paths"]["new"]["points"]
    assert [p["ratio"] for p in new] == pytest.approx([1.0, 1.1, 1.2, 1.4])
    assert res["goal"]["met"] is True and res["goal"]["value"] == pytest.approx(1.4)
    too_big = memory.summarize({"new": [_mem_point(32, 1000.0), _mem_point(256, 1600.0)]})
    assert too_big["goal"]["met"] is False


def test_memory_report_shows_both_paths_skipped_and_unrun_sizes() -> None:
    md = memory.render(_mem_result())
    assert "**met**" in md and "1.40x" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 5  # header + 4 sizes
    assert rows[3].count("skipped") == 1 and rows[4].count("not run") == 1
    assert "`old` at N = 128 was skipped: needs 12 GiB." in md
    assert "every response ran to the limit" in md
    assert "| 256 | 4.64 | 1,400 | 1.40x | 32.0 | 2-3 | not run |" in md  # 256 x 32 x 151,936 x 4 B


def test_memory_reuses_old_figures_only_from_the_same_settings() -> None:
    res, earlier = _mem_result(), _mem_result()
    del res["paths"]["old"]
    earlier["notes"] = ["old figures from a log"]
    memory.reuse_old(res, earlier)
    assert [p["n"] for p in res["paths"]["old"]["points"]] == [32, 64, 128]
    assert "- old figures from a log" in memory.render(res)
    earlier["new_tokens"] = 16
    with pytest.raises(ValueError, match="new_tokens"):
        memory.reuse_old(res, earlier)


def test_memory_run_overrides_name_the_batch_and_micro_batch() -> None:
    out = memory.run_overrides(["policy.path=/p"], 64, 32, 1, micro=8)
    assert "rollout.prompts_per_step=8" in out and "trainer.micro_batch_size=8" in out
    assert not any(o.startswith("trainer.micro") for o in memory.run_overrides([], 64, 32, 1, None))
    with pytest.raises(ValueError, match="multiple of the group size"):
        memory.run_overrides([], 60, 32, 1, None)


def test_assets_tokenizer_loads_as_qwen2_with_the_same_ids(tmp_path: Path) -> None:
    from jackpot.models import check_same_vocab, load_tokenizer

    spec = AssetSpec(vocab_size=300, policy=(16, 1, 2), rollout=(8, 1, 2), num_examples=10)
    assets = build_assets(tmp_path / "assets", spec)
    assert build_assets(tmp_path / "assets", spec) == assets  # reused, not rebuilt
    policy, rollout = load_tokenizer(assets.policy), load_tokenizer(assets.rollout)
    check_same_vocab(rollout, policy)
    assert type(policy).__name__ == "Qwen2Tokenizer" and len(policy) == 300
    assert policy.eos_token_id == policy.pad_token_id == 299
    text = "héllo wörld 12 ab\n"
    assert policy.encode(text) == build_tokenizer(300).encode(text)
    assert policy.decode(policy.encode(text)) == text
    prompt = json.loads(assets.task.read_text().splitlines()[0])["prompt"]
    assert len(prompt.split()) == spec.prompt_words
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("not ours")
    with pytest.raises(FileExistsError):
        build_assets(tmp_path / "other", spec)
