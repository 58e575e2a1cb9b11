"""The TRL comparison's arithmetic and workload (no TRL, no training run)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
from benchmarks.trl_compare import (
    _plan,
    addition_examples,
    build_tokenizer,
    inrun_period,
    jackpot_step_periods,
    paired_summary,
    periods,
    trl_step_periods,
)


def test_period_is_the_time_difference_per_extra_step() -> None:
    runs = {4: {"wall_s": 10.0, "cpu_s": 12.0}, 34: {"wall_s": 16.0, "cpu_s": 21.0}}
    assert periods(runs, 4, 34) == pytest.approx({"period_s": 0.2, "cpu_period_s": 0.3})


def test_ratios_are_paired_per_round() -> None:
    def side(period: float, tokens: float) -> dict[str, float]:
        return {
            "period_s": period,
            "cpu_period_s": 2 * period,
            "inrun_period_s": period / 2,
            "tokens_per_step": tokens,
        }

    rounds = [
        {"jackpot": side(0.1, 1000.0), "trl": side(0.2, 1000.0)},  # TRL 2x slower
        {"jackpot": side(0.4, 1000.0), "trl": side(0.6, 500.0)},  # a loaded round: 1.5x, 3x
    ]
    out = paired_summary(rounds, "jackpot", "trl")
    assert out["period_ratio"] == pytest.approx({"median": 1.75, "min": 1.5, "max": 2.0})
    assert out["inrun_period_ratio"] == out["period_ratio"]
    assert out["tokens_per_s_ratio"]["max"] == pytest.approx(3.0)
    assert out["jackpot"]["tokens_per_s"]["median"] == pytest.approx((10000 + 2500) / 2)
    assert out["trl"]["period_s"]["median"] == pytest.approx(0.4)


def test_workload_prompts_and_tokenizer() -> None:
    examples = addition_examples(512, seed=0)
    assert len({e["prompt"] for e in examples}) == 512
    assert examples == addition_examples(512, seed=0)
    a, b = examples[0]["prompt"][:-1].split("+")
    assert int(examples[0]["answer"]) == int(a) + int(b) and len(a) == len(b) == 2
    tok = build_tokenizer()
    ids = tok.encode(examples[0]["prompt"])
    assert len(ids) == 6 and tok.decode(ids) == examples[0]["prompt"]
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 1)


def test_plan_argument_is_checked() -> None:
    assert _plan("4,34,5") == (4, 34, 5)
    with pytest.raises(argparse.ArgumentTypeError):
        _plan("5,4,1")


def test_inrun_periods_skip_the_first_steps_and_read_each_frameworks_log(tmp_path: Path) -> None:
    assert inrun_period([9.0, 9.0, 9.0, 0.1, 0.2, 0.3]) == pytest.approx(0.2)
    assert inrun_period([0.5, 0.7]) == pytest.approx(0.6)  # too short to skip anything
    assert math.isnan(inrun_period([]))
    (tmp_path / "metrics.csv").write_text("step,perf/period_s\n0,\n1,0.25\n2,0.5\n")
    assert jackpot_step_periods(tmp_path) == [0.25, 0.5]
    (tmp_path / "log.json").write_text(json.dumps({"log": [], "log_times": [1.0, 1.5, 2.25]}))
    assert trl_step_periods(tmp_path) == pytest.approx([0.5, 0.75])
