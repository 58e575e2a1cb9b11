"""The method comparison: summaries on hand-made curves, config validation, a tiny real grid."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from jackpot.config import ConfigError
from jackpot.experiments.compare import (
    CompareConfig,
    MethodConfig,
    load_compare_config,
    markdown_table,
    run_comparison,
)
from jackpot.experiments.summary import (
    collapse_step,
    summarise_method,
    summarise_run,
)

from .conftest import ROOT, tiny_overrides


def _rows(acc: list[float], **const: float) -> list[dict[str, float]]:
    return [{"step": float(i), "eval/accuracy": a, **const} for i, a in enumerate(acc)]


@pytest.mark.parametrize(
    ("curve", "expected"),
    [
        ([0.2, 0.4, 0.5, 0.6], None),  # steady gain
        ([0.2, 0.6, 0.2, 0.1], 2.0),  # falls under half its best and stays there
        ([0.2, 0.6, 0.2, 0.5], None),  # dips, then recovers
        ([0.0, 0.0, 0.0], None),  # never learned: nothing to collapse from
        ([0.4, 0.1, 0.5, 0.2], 3.0),  # a new best resets the reference
    ],
)
def test_collapse_step(curve: list[float], expected: float | None) -> None:
    assert collapse_step(list(enumerate(map(float, curve))), 0.5) == expected


def test_a_run_stopped_on_nonfinite_updates_collapsed_where_it_stopped() -> None:
    assert collapse_step([(0.0, 0.3), (1.0, 0.4)], 0.5, stopped_at=1.0) == 1.0
    assert collapse_step([(0.0, 0.3), (1.0, 0.1)], 0.5, stopped_at=1.0) == 1.0


def test_summarise_run_and_method() -> None:
    rows = _rows(
        [0.2, 0.3, 0.5],
        **{"mismatch/kl_k3": 0.1, "perf/step_s": 2.0, "perf/rollout_share": 0.25},
    )
    rows[1]["obrs/accept_rate"] = 0.9
    rows[2]["obrs/accept_rate"] = 0.8
    run = summarise_run(rows, wall_s=10.0, collapse_frac=0.5)
    assert run.final_accuracy == 0.5 and run.best_accuracy == 0.5
    assert run.kl_k3 == pytest.approx(0.1)
    assert run.acceptance == pytest.approx(0.85)
    assert run.rollout_share == pytest.approx(0.25)
    assert math.isnan(run.kl_k3_after) and math.isnan(run.final_pass_at_k)
    other = summarise_run(_rows([0.1, 0.3, 0.1]), wall_s=20.0, collapse_frac=0.5)
    assert other.acceptance != other.acceptance  # no keep/accept rate logged: NaN
    method = summarise_method("m", [run, other])
    assert method.accuracy[0] == pytest.approx(0.3)
    assert method.accuracy[1] == pytest.approx(math.sqrt(0.08))  # sample std of 0.5, 0.1
    assert method.collapsed == 1 and method.collapse_steps == (2.0,)
    assert method.wall_s == pytest.approx(15.0)
    table = markdown_table([method], _cfg_for_table(), 60.0)
    assert "| `m` | 0.300 ± 0.283 | +0.000 |" in table and "1/2 (2)" in table


def _cfg_for_table() -> CompareConfig:
    return CompareConfig(methods={"m": MethodConfig()}, reference="m", seeds=[0, 1])


def _write_compare_config(tmp_path: Path, cache: Path, **extra: str) -> Path:
    base = tiny_overrides(tmp_path / "unused", cache, steps=2)
    shared = [o for o in base if not o.startswith("run.dir=")]
    lines = [
        f"out: {tmp_path / 'results'}",
        f"runs_dir: {tmp_path / 'runs'}",
        "seeds: [0, 1]",
        "jobs: 2",
        "overrides:",
        *[f"  - {json.dumps(o)}" for o in shared],
        "methods:",
        f"  on_policy: {{config: {ROOT / 'configs' / 'on_policy.yaml'}}}",
        f"  obrs: {{config: {ROOT / 'configs' / 'default.yaml'}}}",
        *[f"{k}: {v}" for k, v in extra.items()],
    ]
    path = tmp_path / "compare.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("name", ["compare", "compare_noclip"])
def test_the_shipped_comparison_configs_load_every_method(name: str) -> None:
    cfg = load_compare_config(ROOT / "configs" / f"{name}.yaml")
    assert next(iter(cfg.methods)) == cfg.reference == "on_policy"
    assert {"none", "tis", "icepop", "jackpot"} <= set(cfg.methods)
    assert len(cfg.seeds) >= 3


def test_bad_comparison_configs_fail_before_anything_runs(
    tmp_path: Path, warmstart_cache: Path
) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_compare_config(tmp_path / "missing.yaml")
    good = _write_compare_config(tmp_path, warmstart_cache)
    with pytest.raises(ConfigError, match="reference"):
        load_compare_config(good, ["reference=tis"])
    with pytest.raises(ConfigError, match="jobs"):
        load_compare_config(good, ["jobs=0"])
    with pytest.raises(ConfigError, match="method 'obrs'.*sampler.budget"):
        load_compare_config(good, ["methods.obrs.overrides=[sampler.budget=1.5]"])
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_tiny_grid_runs_end_to_end_and_reuses_finished_runs(
    tmp_path: Path, warmstart_cache: Path
) -> None:
    cfg = load_compare_config(_write_compare_config(tmp_path, warmstart_cache))
    result = run_comparison(cfg)
    out = tmp_path / "results"
    for name in ("compare.md", "compare.json", "compare_metrics.csv", "compare_eval_accuracy.png"):
        assert (out / name).is_file(), name
    table = (out / "compare.md").read_text()
    assert "`on_policy`" in table and "`obrs`" in table
    assert {m["name"]: m["seeds"] for m in result["methods"]} == {"on_policy": 2, "obrs": 2}
    obrs = next(m for m in result["methods"] if m["name"] == "obrs")
    assert 0 < obrs["acceptance"][0] <= 1
    first = (tmp_path / "runs" / "obrs" / "seed0" / "metrics.csv").stat().st_mtime_ns
    run_comparison(cfg)  # finished runs are reused, not rerun
    assert (tmp_path / "runs" / "obrs" / "seed0" / "metrics.csv").stat().st_mtime_ns == first
