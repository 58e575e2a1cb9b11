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
    _repo_relative,
    load_compare_config,
    main,
    markdown_table,
    paired_comparisons,
    quick_config,
    run_comparison,
)
from jackpot.experiments.summary import (
    accuracy_curve,
    area_under_curve,
    collapse_step,
    cumulative_time,
    gpu_rollout_scale,
    paired_comparison,
    spread,
    summarise_method,
    summarise_run,
    time_to_reach,
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


def test_a_collapse_counts_against_the_starting_accuracy_when_given() -> None:
    curve = [(0.0, 0.6), (1.0, 0.25), (2.0, 0.2)]
    assert collapse_step(curve, 0.5) == 1.0  # below half of the best so far (0.6)
    assert collapse_step(curve, 0.5, reference=0.4) is None  # above half of the start (0.4)
    assert collapse_step(curve, 0.5, reference=0.6) == 1.0


def test_the_accuracy_curve_starts_before_the_first_update_and_feeds_the_new_figures() -> None:
    rows = _rows([0.3, 0.5, 0.4, 0.6], **{"weights/ess": 0.8, "data/zero_adv_group_frac": 0.25})
    rows[0]["eval/start_accuracy"] = 0.1
    for i, r in enumerate(rows):
        r["reward/mean"] = 0.1 * (i + 1)
    assert accuracy_curve(rows) == [(0.0, 0.1), (1.0, 0.3), (2.0, 0.5), (3.0, 0.4), (4.0, 0.6)]
    # Trapezoids over 4 updates: (0.2 + 0.4 + 0.45 + 0.5) / 4
    assert area_under_curve(accuracy_curve(rows)) == pytest.approx(0.3875)
    run = summarise_run(rows, wall_s=1.0, collapse_frac=0.5)
    assert run.start_accuracy == 0.1 and run.auc_accuracy == pytest.approx(0.3875)
    assert run.last_accuracy == pytest.approx(0.5)  # mean of the last three evaluations
    assert (run.ess, run.zero_adv_frac) == (pytest.approx(0.8), pytest.approx(0.25))
    assert (run.reward_start, run.reward_end) == (pytest.approx(0.1), pytest.approx(0.4))
    assert run.collapse_step is None
    falls = _rows([0.3, 0.04, 0.02])
    falls[0]["eval/start_accuracy"] = 0.1
    assert summarise_run(falls, wall_s=1.0, collapse_frac=0.5).collapse_step == 1.0


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
    rows[0]["mismatch/kl_k3"] = 0.4
    run = summarise_run(rows, wall_s=10.0, collapse_frac=0.5, target=0.3, rollout_scale=3.0)
    assert run.final_accuracy == 0.5 and run.best_accuracy == 0.5 and run.first_accuracy == 0.2
    assert run.kl_k3 == pytest.approx(0.2)
    assert (run.kl_k3_start, run.kl_k3_end) == (0.4, pytest.approx(0.1))
    assert run.acceptance == pytest.approx(0.85)
    assert run.rollout_share == pytest.approx(0.25) and run.train_s == pytest.approx(6.0)
    assert run.time_to_target_s == pytest.approx(4.0)  # reached at step 1, 2 x 2 s
    assert run.train_s_gpu == pytest.approx(3 * (0.5 * 3 + 1.5))
    assert run.time_to_target_gpu_s == pytest.approx(2 * (0.5 * 3 + 1.5))
    assert math.isnan(run.kl_k3_after) and math.isnan(run.final_pass_at_k)
    other = summarise_run(_rows([0.1, 0.3, 0.1]), wall_s=20.0, collapse_frac=0.5, target=0.4)
    assert other.acceptance != other.acceptance  # no keep/accept rate logged: NaN
    assert math.isnan(other.time_to_target_s) and math.isnan(other.train_s_gpu)
    method = summarise_method("m", [run, other])
    assert method.accuracy.mean == pytest.approx(0.3)
    assert method.accuracy.std == pytest.approx(math.sqrt(0.08))  # sample std of 0.5, 0.1
    # 95 % t-interval with 1 degree of freedom: t = 12.706
    assert method.accuracy.ci95 == pytest.approx(12.7062 * math.sqrt(0.08) / math.sqrt(2), 1e-4)
    assert method.collapsed == 1 and method.collapse_steps == (2.0,)
    assert method.reached == 1 and method.time_to_target_s.mean == pytest.approx(4.0)
    assert method.wall_s == pytest.approx(15.0)
    table = markdown_table([method], [], _cfg_for_table(), 60.0, 30.0, 3.0)
    assert "| `m` | n/a | 0.300 ± 2.541 |" in table and "1/2 (2)" in table  # no start logged
    assert "4 ± nan" not in table and "| 4 s (1/2) |" in table and "multiplied by 3.00" in table
    unprojected = markdown_table([method], [], _cfg_for_table(), 60.0, 30.0, math.nan)
    assert "no projected GPU time" in unprojected and "nan" not in unprojected


def test_spread_is_a_t_interval() -> None:
    s = spread([1.0, 2.0, 3.0, math.nan])
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)
    assert s.ci95 == pytest.approx(4.302653 / math.sqrt(3), 1e-6)  # t(0.975, df=2)
    one = spread([0.4])
    assert (one.mean, one.std, one.n) == (0.4, 0.0, 1) and math.isnan(one.ci95)
    assert spread([]).n == 0 and math.isnan(spread([]).mean)


def test_paired_comparison_pairs_seeds_and_tests_the_differences() -> None:
    a = {0: 0.5, 1: 0.6, 2: 0.7, 9: 0.9}  # seed 9 has no partner: left out
    b = {0: 0.4, 1: 0.4, 2: 0.6}
    p = paired_comparison("x", "y", "final_accuracy", a, b)
    assert p.n == 3 and p.diff.mean == pytest.approx(0.4 / 3)
    # differences 0.1, 0.2, 0.1: t = 4 with 2 df, two-sided p = 1 - 4 / sqrt(18)
    assert p.p_ttest == pytest.approx(1 - 4 / math.sqrt(18), 1e-6)
    up = {s: 0.1 * s for s in range(5)}
    down = {s: 0.1 * s - 0.1 * (s + 1) for s in range(5)}  # differences 0.1 ... 0.5
    w = paired_comparison("x", "y", "final_accuracy", up, down)
    assert w.p_wilcoxon == pytest.approx(2 / 32)  # exact: all 5 signs positive
    same = paired_comparison("x", "y", "final_accuracy", b, b)
    assert same.diff.mean == 0 and math.isnan(same.p_ttest) and math.isnan(same.p_wilcoxon)


def test_gpu_projection_makes_rollouts_the_share_of_an_on_policy_step() -> None:
    rows = _rows([0.2, 0.3], **{"perf/step_s": 2.0, "perf/rollout_share": 0.25})
    scale = gpu_rollout_scale([rows], 0.8)
    assert scale == pytest.approx(0.8 / 0.2 * 1.5 / 0.5)
    step_time = cumulative_time(rows, scale)[0][1]
    assert 0.5 * scale / step_time == pytest.approx(0.8)
    assert math.isnan(gpu_rollout_scale([_rows([0.1])], 0.8))  # no timings logged
    with pytest.raises(ValueError, match="share"):
        gpu_rollout_scale([rows], 1.0)


def test_time_to_reach_is_the_first_evaluation_at_the_target() -> None:
    acc = [(9.0, 0.3), (19.0, 0.5), (29.0, 0.45)]
    times = [(float(s), 2.0 * (s + 1)) for s in range(30)]
    assert time_to_reach(acc, times, 0.45) == 40.0
    assert math.isnan(time_to_reach(acc, times, 0.9))


def test_paired_comparisons_cover_every_method_against_each_baseline() -> None:
    cfg = CompareConfig(
        methods={m: MethodConfig() for m in ("on_policy", "tis", "jackpot")},
        paired_against=["on_policy", "tis"],
        seeds=[0, 1],
    )
    rows = {
        (m, s): summarise_run(_rows([0.1 * s, v + 0.1 * s]), 1.0, 0.5)
        for m, v in (("on_policy", 0.5), ("tis", 0.4), ("jackpot", 0.45))
        for s in (0, 1)
    }
    pairs = {(p.method, p.against, p.metric): p for p in paired_comparisons(cfg, rows)}
    assert len(pairs) == 2 * 2 * 4  # 2 others per baseline, final/last/mean/best accuracy
    assert pairs[("jackpot", "tis", "final_accuracy")].diff.mean == pytest.approx(0.05)
    assert pairs[("tis", "on_policy", "best_accuracy")].diff.mean == pytest.approx(-0.1)


def test_quick_config_keeps_the_reference_and_jackpot_for_one_seed() -> None:
    cfg = CompareConfig(
        methods={m: MethodConfig() for m in ("on_policy", "none", "tis", "jackpot")},
        paired_against=["on_policy", "tis"],
        out="runs/x",
    )
    quick = quick_config(cfg)
    assert list(quick.methods) == ["on_policy", "jackpot"] and quick.seeds == [0]
    assert quick.paired_against == ["on_policy"] and quick.out == str(Path("runs/x/quick"))
    assert quick.runs_dir == cfg.runs_dir  # the full grid reuses the quick runs


def test_results_name_paths_relative_to_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    inside, outside = str(ROOT / "configs" / "tis.yaml"), "/elsewhere/x.yaml"
    value = {"methods": {"tis": {"config": inside}}, "out": [outside, "runs/a"]}
    assert _repo_relative(value) == {
        "methods": {"tis": {"config": str(Path("configs/tis.yaml"))}},
        "out": [outside, "runs/a"],
    }


def _cfg_for_table() -> CompareConfig:
    return CompareConfig(
        methods={"m": MethodConfig()}, reference="m", paired_against=[], seeds=[0, 1]
    )


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


@pytest.mark.parametrize("name", ["compare_paperlike", "compare_extreme"])
def test_the_shipped_comparisons_run_every_method_for_enough_seeds(name: str) -> None:
    cfg = load_compare_config(ROOT / "configs" / f"{name}.yaml")
    assert next(iter(cfg.methods)) == cfg.reference == "on_policy"
    assert set(cfg.methods) == {
        "on_policy",
        "none",
        "tis",
        "icepop",
        "jackpot",
        "jackpot_frozen_rollout",
    }
    assert cfg.paired_against == ["on_policy", "tis"] and cfg.target_accuracy is not None
    assert len(cfg.seeds) >= (5 if name == "compare_paperlike" else 3)
    assert cfg.out.startswith("runs/")  # never over the committed results by default


def test_the_staleness_ablation_reuses_each_rollout_batch_without_the_clip() -> None:
    from jackpot.config import load_config

    cfg = load_compare_config(ROOT / "configs" / "compare_staleness.yaml")
    assert set(cfg.methods) == {
        f"{m}{x}" for m in ("clipped", "no_clip", "jackpot_no_clip") for x in ("", "_64x")
    }
    assert cfg.out.startswith("runs/")
    runs = {
        name: load_config(
            ROOT / "configs" / m.config, [*cfg.overrides, *m.overrides], check_paths=False
        )
        for name, m in cfg.methods.items()
    }
    for name, run in runs.items():  # one model, each rollout batch 16 times the train batch
        assert run.algo.mode == "on_policy", name
        assert run.algo.minibatches == (64 if name.endswith("_64x") else 16), name
        assert run.algo.clip == name.startswith("clipped"), name
    jackpot = runs["jackpot_no_clip"].sampler
    assert (jackpot.name, jackpot.p_target, jackpot.lam) == ("obrs", "new", 0.5)


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
    tmp_path: Path, warmstart_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_compare_config(tmp_path, warmstart_cache, target_accuracy="0.0")
    cfg = load_compare_config(path)
    result = run_comparison(cfg)
    out = tmp_path / "results"
    for name in (
        "compare.md",
        "compare.json",
        "compare_metrics.csv",
        "compare_eval_accuracy.png",
        "compare_accuracy_vs_time.png",
    ):
        assert (out / name).is_file(), name
    table = (out / "compare.md").read_text()
    assert "`on_policy`" in table and "`obrs`" in table and "projected GPU" in table
    assert {m["name"]: m["seeds"] for m in result["methods"]} == {"on_policy": 2, "obrs": 2}
    obrs = next(m for m in result["methods"] if m["name"] == "obrs")
    assert 0 < obrs["acceptance"]["mean"] <= 1 and obrs["reached"] == 2  # target 0: reached
    assert result["on_policy_methods"] == ["on_policy"] and result["gpu_rollout_scale"] > 0
    assert [(p["method"], p["against"]) for p in result["paired"]] == [("obrs", "on_policy")] * 4
    assert all(m["start_accuracy"]["n"] == 2 for m in result["methods"])  # evaluated at step 0
    json.loads((out / "compare.json").read_text())  # strict JSON
    first = (tmp_path / "runs" / "obrs" / "seed0" / "metrics.csv").stat().st_mtime_ns
    # --quick reuses the grid's runs (nothing reruns) and writes beside --out
    assert main(["--config", str(path), "--quick", "--out", str(tmp_path / "q")]) == 0
    assert (tmp_path / "runs" / "obrs" / "seed0" / "metrics.csv").stat().st_mtime_ns == first
    quick = json.loads((tmp_path / "q" / "quick" / "compare.json").read_text())
    assert [m["name"] for m in quick["methods"]] == ["on_policy", "obrs"]
    assert quick["config"]["seeds"] == [0]
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config error" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("compare_*.yaml")), ids=str)
def test_every_shipped_comparison_loads_and_writes_under_runs(path: Path) -> None:
    cfg = load_compare_config(path)  # validates every method's run config
    assert cfg.out.startswith("runs/") and cfg.runs_dir.startswith("runs/")
    assert cfg.reference in cfg.methods and len(cfg.seeds) >= 3


def test_the_ablation_switches_one_ingredient_at_a_time() -> None:
    from jackpot.config import load_config

    cfg = load_compare_config(ROOT / "configs" / "compare_ablation.yaml")
    runs = {
        name: load_config(
            ROOT / "configs" / m.config, [*cfg.overrides, *m.overrides], check_paths=False
        )
        for name, m in cfg.methods.items()
    }
    for name in ("tis_distill_fwd", "tis_distill_rev", "none_distill_rev"):
        assert runs[name].algo.train_rollout and not runs[name].algo.rollout_rl, name
    assert runs["tis_trained"].algo.train_rollout and runs["tis_trained"].algo.rollout_rl
    assert not runs["tis"].algo.train_rollout and not runs["obrs_frozen"].algo.train_rollout
    assert runs["tis_cap5_5"].sampler.cap == 5.5
    new = runs["jackpot_new_lam"].sampler
    assert (new.p_target, new.lam, new.budget) == ("new", 0.4, None)
    assert len(cfg.seeds) >= 5


def test_the_async_grid_splits_the_cores_of_its_asynchronous_runs() -> None:
    """k = 0 takes the grid's threads; k >= 1 gives the trainer and the worker one each."""
    import os

    from jackpot.config import load_config
    from jackpot.experiments.compare import run_overrides

    cfg = load_compare_config(ROOT / "configs" / "compare_async.yaml")
    assert cfg.jobs == 1 and cfg.paired_against == ["tis_k0", "jackpot_k0"]
    for name, m in cfg.methods.items():
        run = load_config(
            ROOT / "configs" / m.config, run_overrides(cfg, name, 0), check_paths=False
        )
        k = int(name[-1]) if name != "on_policy" else 0
        assert run.rollout.max_staleness == k, name
        assert run.trainer.num_threads == (1 if k else os.cpu_count()), name
        assert run.rollout.num_threads == (1 if k else None), name
        assert run.algo.train_rollout or name == "on_policy", name  # its weights move
