"""Methods x seeds: ``python -m jackpot.experiments.compare`` (or ``jackpot compare``).

Runs every method of the comparison (on-policy, decoupled with none / TIS / IcePop / OBRS, ...)
for every seed with identical data, models and step budgets: each run is one
``python -m jackpot.fit --config <method's config> <shared overrides> <method's overrides>``
subprocess, and the shipped method configs all derive from ``configs/default.yaml``.
Finished runs are reused and interrupted ones resumed, so a rerun after a crash only does what
is missing. Writes ``compare.md`` (tables), ``compare.json``, ``compare_metrics.csv`` (the
curves) and the plots (per RL step, and accuracy against training time) to ``out``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jackpot.experiments.summary import (
    MethodSummary,
    PairedComparison,
    RunSummary,
    Spread,
    acceptance_key,
    accuracy_curve,
    cumulative_time,
    gpu_rollout_scale,
    paired_comparison,
    series,
    summarise_method,
    summarise_run,
)

__all__ = ["CompareConfig", "load_compare_config", "main", "quick_config", "run_comparison"]

CURVES = {
    "eval_accuracy": ("eval/accuracy", "eval accuracy (mean@k)"),
    "mismatch_kl": ("mismatch/kl_k3", "mismatch KL(p_inf || policy), k3 (nats)"),
    "acceptance": (None, "acceptance (OBRS) / kept tokens (others)"),
    "reward": ("reward/mean", "rollout reward"),
}
"""Plot name -> (metric key, or None for the acceptance/keep rate, y label)."""

PAIRED_METRICS = {
    "final_accuracy": "final",
    "last_accuracy": "last-3 mean",
    "auc_accuracy": "mean over run",
    "best_accuracy": "best",
}
"""Accuracy figures compared seed by seed (see :class:`~jackpot.experiments.summary.RunSummary`),
with their column names."""

_FINISHED = "finished.json"
"""Written into a run's directory when its subprocess ended; holds exit code and wall time."""


@dataclass
class MethodConfig:
    """One method: a run config and overrides on top of it."""

    config: str = "default.yaml"
    """Run config (relative to the comparison config's folder), e.g. ``tis.yaml``."""
    overrides: list[str] = field(default_factory=list)
    """Dotted overrides of this method, applied after the shared ones."""


@dataclass
class CompareConfig:
    """A comparison: methods (run config + overrides), shared overrides, seeds."""

    out: str = "runs/compare/results"
    """Where the tables, JSON, curves and plots go (``--out`` on the command line)."""
    runs_dir: str = "runs/compare"
    """Where each run's own ``run.dir`` lives (metrics, checkpoints, logs)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """``run.seed`` of each repetition (rollouts, acceptance draws, prompt order)."""
    jobs: int = 2
    """Runs in parallel; each gets ``cores // jobs`` torch threads (unless its method sets
    ``trainer.num_threads``)."""
    overrides: list[str] = field(default_factory=list)
    """Dotted overrides applied to every run (the shared setting)."""
    methods: dict[str, MethodConfig] = field(default_factory=dict)
    """Method name -> its run config and overrides, in table order."""
    reference: str = "on_policy"
    """Method the others are compared with first (accuracy difference)."""
    paired_against: list[str] = field(default_factory=lambda: ["on_policy"])
    """Methods every other method is compared with seed by seed (paired tests)."""
    collapse_frac: float = 0.5
    """A run has collapsed once its eval accuracy stays below this share of its best so far."""
    target_accuracy: float | None = None
    """Eval accuracy whose first reaching is timed (training seconds); None = not timed."""
    gpu_rollout_share: float = 0.8
    """Rollout share of an on-policy step on a GPU (the paper's figure) that the projected time
    axis assumes; calibrated on the methods whose run config has ``algo.mode=on_policy``."""

    def __post_init__(self) -> None:
        """Validate; messages name the key."""
        if not self.methods:
            raise ValueError("methods must name at least one method")
        if not self.seeds:
            raise ValueError("seeds must hold at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={self.seeds} has duplicates")
        if self.jobs < 1:
            raise ValueError(f"jobs={self.jobs} must be >= 1")
        if not 0 < self.collapse_frac < 1:
            raise ValueError(f"collapse_frac={self.collapse_frac} must be in (0, 1)")
        if not 0 < self.gpu_rollout_share < 1:
            raise ValueError(f"gpu_rollout_share={self.gpu_rollout_share} must be in (0, 1)")
        for key, names in (
            ("reference", [self.reference]),
            ("paired_against", self.paired_against),
        ):
            for name in names:
                if name not in self.methods:
                    raise ValueError(
                        f"{key}: {name!r} is not a method; choose from {list(self.methods)}"
                    )
        for name in self.methods:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"method name {name!r} must be letters, digits, '_' or '-'")


def load_compare_config(path: str | Path, overrides: list[str] | None = None) -> CompareConfig:
    """Merge ``path`` and dotted ``overrides`` onto :class:`CompareConfig`; validate each run.

    Every method's run config is loaded (and so validated) before anything runs, so a typo in
    the last method fails now, not an hour in.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from jackpot.config import ConfigError, _load_yaml, load_config

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"comparison config {str(path)!r} does not exist")
    try:
        merged = OmegaConf.merge(
            OmegaConf.structured(CompareConfig),
            OmegaConf.create(_load_yaml(path.read_text(), path)),
            OmegaConf.from_dotlist(overrides or []),
        )
        cfg = OmegaConf.to_object(merged)
    except (OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(f"{path}: {str(exc).splitlines()[0]}") from None
    assert isinstance(cfg, CompareConfig)
    for name, method in cfg.methods.items():
        method.config = str((path.parent / method.config).resolve())
        try:
            load_config(method.config, run_overrides(cfg, name, cfg.seeds[0]))
        except ConfigError as exc:
            raise ConfigError(f"method {name!r}: {exc}") from None
    return cfg


def quick_config(cfg: CompareConfig) -> CompareConfig:
    """A first look: the reference and ``jackpot`` (else the next method), the first seed.

    The runs are the full grid's own (same directories), so a later full run reuses them; the
    tables go to ``<out>/quick``.
    """
    others = [m for m in cfg.methods if m != cfg.reference]
    keep = [cfg.reference, *(["jackpot"] if "jackpot" in others else others[:1])]
    return dataclasses.replace(
        cfg,
        out=str(Path(cfg.out) / "quick"),
        seeds=cfg.seeds[:1],
        methods={m: cfg.methods[m] for m in keep},
        paired_against=[m for m in cfg.paired_against if m in keep],
    )


def run_dir(cfg: CompareConfig, method: str, seed: int) -> Path:
    """The ``run.dir`` of one (method, seed)."""
    return Path(cfg.runs_dir) / method / f"seed{seed}"


def run_overrides(cfg: CompareConfig, method: str, seed: int) -> list[str]:
    """Shared overrides, then the method's, then seed, run dir and thread count (unless the
    method sets ``trainer.num_threads`` itself: an asynchronous run splits its cores between
    the trainer and the rollout worker)."""
    given = [*cfg.overrides, *cfg.methods[method].overrides]
    threads = max((os.cpu_count() or 1) // cfg.jobs, 1)
    own = any(o.startswith("trainer.num_threads=") for o in given)
    return [
        *given,
        f"run.seed={seed}",
        f"run.dir={run_dir(cfg, method, seed)}",
        "run.plot=false",
        *([] if own else [f"trainer.num_threads={threads}"]),
    ]


def _run_one(cfg: CompareConfig, method: str, seed: int) -> dict[str, Any]:
    """Run (or resume, or reuse) one (method, seed); return its ``finished.json`` record.

    A finished run is reused only if it ran the same config file and overrides; a changed
    setting starts that run afresh (its old directory is cleared).
    """
    directory = run_dir(cfg, method, seed)
    done = directory / _FINISHED
    setting = [cfg.methods[method].config, *run_overrides(cfg, method, seed)]
    if done.is_file():
        record = dict(json.loads(done.read_text()))
        if record.get("setting") == setting:
            return record
        shutil.rmtree(directory)
    args = [sys.executable, "-m", "jackpot.fit", "--config", setting[0]]
    if any((directory / "checkpoints").glob("step-*.ckpt")):
        args.append("--resume")
    directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(directory / "log.txt", "a") as log:
        code = subprocess.run([*args, *setting[1:]], stdout=log, stderr=log, check=False).returncode
    record = {"method": method, "seed": seed, "returncode": code, "setting": setting}
    record["wall_s"] = time.perf_counter() - start
    if code not in (0, 1):  # 1 = stopped on non-finite updates: a result, not a failure
        raise RuntimeError(
            f"run {method} seed {seed} failed with exit code {code}; see {directory / 'log.txt'}"
        )
    done.write_text(json.dumps(record))
    print(f"[compare] {method} seed {seed}: exit {code}, {record['wall_s']:.0f} s", flush=True)
    return record


def _run_configs(cfg: CompareConfig) -> dict[str, Any]:
    """Method -> its resolved run config (for the first seed)."""
    from jackpot.config import load_config

    return {
        m: load_config(cfg.methods[m].config, run_overrides(cfg, m, cfg.seeds[0]))
        for m in cfg.methods
    }


def _prime_warm_start(cfg: CompareConfig) -> None:
    """Warm-start (or load) every distinct pair of models once, before runs go in parallel.

    With the runs' own thread count: torch's default oversubscribes a busy machine badly.
    """
    import torch

    from jackpot.fit import build_module

    seen: set[str] = set()
    for run_cfg in _run_configs(cfg).values():
        parts = (run_cfg.policy, run_cfg.rollout_model, run_cfg.warmstart, run_cfg.task)
        key = json.dumps([asdict(p) for p in parts], sort_keys=True)
        if key not in seen:
            seen.add(key)
            torch.set_num_threads(run_cfg.trainer.num_threads or 1)
            build_module(run_cfg)


Curves = dict[tuple[str, int], list[dict[str, float]]]


def run_comparison(cfg: CompareConfig) -> dict[str, Any]:
    """Run every (method, seed), then write the tables, JSON, curves and plots to ``cfg.out``."""
    from jackpot.training.csv_logger import read_metrics

    _prime_warm_start(cfg)
    # Seed-major order: every method runs under about the same machine load, so their times
    # compare even on a shared machine.
    jobs = [(m, s) for s in cfg.seeds for m in cfg.methods]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=cfg.jobs) as pool:
        records = list(pool.map(lambda job: _run_one(cfg, *job), jobs))
    elapsed = time.perf_counter() - start
    rows: Curves = {
        (r["method"], r["seed"]): read_metrics(run_dir(cfg, r["method"], r["seed"]) / "metrics.csv")
        for r in records
    }
    on_policy = [m for m, c in _run_configs(cfg).items() if c.algo.mode == "on_policy"]
    scale = gpu_rollout_scale(
        [rows[(m, s)] for m in on_policy for s in cfg.seeds], cfg.gpu_rollout_share
    )
    target = math.nan if cfg.target_accuracy is None else cfg.target_accuracy
    runs = {
        key: summarise_run(
            rows[key], r["wall_s"], cfg.collapse_frac, r["returncode"] == 1, target, scale
        )
        for key, r in zip(rows, records, strict=True)
    }
    methods = [
        summarise_method(m, [runs[(m, s)] for s in cfg.seeds if rows[(m, s)]]) for m in cfg.methods
    ]
    paired = paired_comparisons(cfg, runs)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    wall = sum(r["wall_s"] for r in records)
    result = {
        "config": _repo_relative(asdict(cfg)),
        "grid_wall_s": elapsed,
        "runs_wall_s": wall,
        "gpu_rollout_scale": scale,
        "on_policy_methods": on_policy,
        "methods": [asdict(m) for m in methods],
        "paired": [asdict(p) for p in paired],
        "runs": [{"method": m, "seed": s, **asdict(v)} for (m, s), v in runs.items()],
    }
    (out / "compare.json").write_text(json.dumps(_finite_or_none(result), indent=2) + "\n")
    (out / "compare.md").write_text(markdown_table(methods, paired, cfg, wall, elapsed, scale))
    _write_curves(out / "compare_metrics.csv", rows)
    for name, (key, label) in CURVES.items():
        plot_curves(rows, cfg, key, label, out / f"compare_{name}.png")
    plot_accuracy_vs_time(rows, cfg, scale, out / "compare_accuracy_vs_time.png")
    return result


def paired_comparisons(
    cfg: CompareConfig, runs: dict[tuple[str, int], RunSummary]
) -> list[PairedComparison]:
    """Every :data:`PAIRED_METRICS` of every method against each of ``cfg.paired_against``."""
    out = []
    for against in cfg.paired_against:
        for method in cfg.methods:
            if method == against:
                continue
            for metric in PAIRED_METRICS:
                a, b = (
                    {s: getattr(v, metric) for (m, s), v in runs.items() if m == name}
                    for name in (method, against)
                )
                out.append(paired_comparison(method, against, metric, a, b))
    return out


def _repo_relative(value: Any) -> Any:
    """``value`` with absolute paths under the working directory made relative to it."""
    if isinstance(value, dict):
        return {k: _repo_relative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_repo_relative(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        path = Path(value)
        if path.is_relative_to(Path.cwd()):
            return str(path.relative_to(Path.cwd()))
    return value


def _finite_or_none(value: Any) -> Any:
    """``value`` with NaN/inf floats as None, so ``compare.json`` is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _ci(s: Spread, digits: int = 3) -> str:
    """``mean ± 95 % half-width`` (``± std`` marked ``sd`` when no interval exists)."""
    if not math.isfinite(s.mean):
        return "n/a"
    if math.isfinite(s.ci95):
        return f"{s.mean:.{digits}f} ± {s.ci95:.{digits}f}"
    return f"{s.mean:.{digits}f}"


def _p(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.2f}" if value >= 0.01 else "<0.01"


def _paired_cell(p: PairedComparison | None) -> str:
    if p is None or not math.isfinite(p.diff.mean):
        return "—"
    interval = (
        f" [{p.diff.mean - p.diff.ci95:+.3f}, {p.diff.mean + p.diff.ci95:+.3f}]"
        if math.isfinite(p.diff.ci95)
        else ""
    )
    return f"{p.diff.mean:+.3f}{interval} p={_p(p.p_ttest)} / {_p(p.p_wilcoxon)}"


def _share(value: float) -> str:
    return f"{value:.0%}" if math.isfinite(value) else "n/a"


def _seconds(s: Spread, reached: int, seeds: int) -> str:
    if reached == 0:
        return f"never (0/{seeds})"
    return f"{_ci(s, 0)} s ({reached}/{seeds})"


def markdown_table(
    methods: list[MethodSummary],
    paired: list[PairedComparison],
    cfg: CompareConfig,
    runs_wall_s: float,
    grid_wall_s: float,
    scale: float,
) -> str:
    """The comparison as two markdown tables: accuracy (with paired tests), mismatch and cost.

    ``runs_wall_s``: the wall times of all runs added up (reused runs count with the time they
    took when they ran); ``grid_wall_s``: how long this invocation took; ``scale``: the
    projected GPU rollout factor (:func:`gpu_rollout_scale`).
    """
    by = {(p.method, p.against, p.metric): p for p in paired}
    target = cfg.target_accuracy
    lines = [
        f"Seeds {list(cfg.seeds)}; mean ± half-width of the 95 % confidence interval over seeds "
        "(t-distribution). Accuracy = mean@k of the policy on the held-out split; start = "
        "before the first update, final = the last evaluation, last-3 mean = the mean of the "
        "last three, mean over run = the area under the accuracy curve (from the start) "
        "divided by its length. Collapse: eval accuracy stays below "
        f"{cfg.collapse_frac:.0%} of the starting accuracy (of its best so far where no start "
        f"was logged). Runs: {runs_wall_s / 60:.1f} min of wall time added up; this invocation "
        f"took {grid_wall_s / 60:.1f} min with {cfg.jobs} in parallel (reused runs take no "
        "time).",
        "",
        "| method | start acc | final acc | last-3 mean | best acc | mean over run "
        "| final pass@k | collapsed (steps) |",
        "| --- " * 8 + "|",
    ]
    for m in methods:
        collapsed = f"{m.collapsed}/{m.seeds}"
        if m.collapse_steps:
            collapsed += " (" + ", ".join(f"{s:.0f}" for s in m.collapse_steps) + ")"
        lines.append(
            f"| `{m.name}` | {_ci(m.start_accuracy)} | {_ci(m.accuracy)} | "
            f"{_ci(m.last_accuracy)} | {_ci(m.best_accuracy)} | {_ci(m.auc_accuracy)} | "
            f"{_ci(m.pass_at_k)} | {collapsed} |"
        )
    for against in cfg.paired_against:
        lines += [
            "",
            f"Paired against `{against}`: the difference seed by seed, with its 95 % t-interval "
            "and the p-values of a paired t-test / Wilcoxon signed-rank test.",
            "",
            "| method | " + " | ".join(f"Δ {name}" for name in PAIRED_METRICS.values()) + " |",
            "| --- " * (1 + len(PAIRED_METRICS)) + "|",
        ]
        for m in methods:
            if m.name != against:
                cells = [_paired_cell(by.get((m.name, against, k))) for k in PAIRED_METRICS]
                lines.append(f"| `{m.name}` | {' | '.join(cells)} |")
    reach = f"time to acc ≥ {target:.2f}" if target is not None else "time to target"
    project = math.isfinite(scale)
    projection = (
        f"**projected GPU**: the same with the rollout time multiplied by {scale:.2f}, the "
        f"factor that makes rollouts {cfg.gpu_rollout_share:.0%} of an on-policy step (the "
        "paper's GPU figure), keeping the measured tokens, update times and the two models' "
        "measured relative speed: a projection, not a measurement."
        if project
        else "no projected GPU time: no on-policy method here to calibrate it on."
    )
    gpu_head = f" projected GPU: train time | projected GPU: {reach} |" if project else ""
    lines += [
        "",
        "Mismatch and cost. KL = `mismatch/kl_k3`, KL(p_inf ‖ p_target) per token (k3) before "
        "correction, at the first step and over the last 10 % of the steps; after OBRS = on the "
        "accepted tokens (mean over steps). ESS = `weights/ess` and zero-adv. groups = the share "
        "of groups whose rewards are all equal (no signal), means over steps. Rollout reward = "
        "`reward/mean` of whichever model rolls out (the rollout model in decoupled runs), at "
        "the first step and over the last 10 % of the steps. Training time = rollout + update "
        "seconds summed over the steps (evaluation and start-up excluded), measured on this "
        f"CPU; {projection} "
        "Time to target: mean over the seeds that reached it (how many in brackets).",
        "",
        "| method | KL start | KL end | KL after OBRS | acceptance / kept | ESS "
        "| zero-adv. groups | rollout reward start → end | "
        f"train time / run | rollout share | {reach} |{gpu_head}",
        "| --- " * (13 if project else 11) + "|",
    ]
    for m in methods:
        gpu = (
            f" {m.train_s_gpu:.0f} s | {_seconds(m.time_to_target_gpu_s, m.reached, m.seeds)} |"
            if project
            else ""
        )
        lines.append(
            f"| `{m.name}` | {_ci(m.kl_k3_start, 3)} | {_ci(m.kl_k3_end, 3)} | "
            f"{_ci(m.kl_k3_after, 3)} | {_ci(m.acceptance)} | {_ci(m.ess)} | "
            f"{_ci(m.zero_adv_frac)} | {_ci(m.reward_start)} → {_ci(m.reward_end)} | "
            f"{m.train_s:.0f} s | "
            f"{_share(m.rollout_share)} | {_seconds(m.time_to_target_s, m.reached, m.seeds)} |{gpu}"
        )
    lines += ["", f"Shared overrides: `{' '.join(cfg.overrides) or '(none)'}`. Methods:", ""]
    for name, method in cfg.methods.items():
        extra = f" {' '.join(method.overrides)}" if method.overrides else ""
        lines.append(f"- `{name}`: `configs/{Path(method.config).name}{extra}`")
    return "\n".join(lines) + "\n"


def _write_curves(path: Path, rows: Curves) -> None:
    """Long-format curves (method, seed, step, key, value) of the plotted and tabled keys."""
    keys = (
        "eval/start_accuracy",
        "eval/accuracy",
        "eval/pass_at_k",
        "reward/mean",
        "mismatch/kl_k3",
        "mismatch/kl_k3_after",
        "obrs/accept_rate",
        "sampler/keep_rate",
        "perf/step_s",
        "perf/rollout_share",
        "perf/rollout_tokens_per_s",
        "weights/ess",
        "data/zero_adv_group_frac",
    )
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "seed", "step", "key", "value"])
        for (method, seed), run_rows in rows.items():
            for key in keys:
                for step, value in series(run_rows, key):
                    writer.writerow([method, seed, int(step), key, f"{value:.6g}"])


def _band(ax: Any, xs: list[float], values: list[list[float]], label: str) -> None:
    """Mean line with a min-max band over seeds."""
    mean = [sum(v) / len(v) for v in values]
    (line,) = ax.plot(xs, mean, label=label, marker="." if len(xs) < 15 else None)
    ax.fill_between(
        xs,
        [min(v) for v in values],
        [max(v) for v in values],
        color=line.get_color(),
        alpha=0.15,
        linewidth=0,
    )


def plot_curves(rows: Curves, cfg: CompareConfig, key: str | None, label: str, out: Path) -> Path:
    """One line per method (mean over seeds) with a min-max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for method in cfg.methods:
        per_seed: list[dict[float, float]] = []
        for seed in cfg.seeds:
            run_rows = rows.get((method, seed), [])
            k = key or acceptance_key(run_rows)
            # Accuracy from its start (before the first update), x = updates done.
            curve = accuracy_curve(run_rows) if k == "eval/accuracy" else series(run_rows, k)
            per_seed.append(dict(curve))
        steps = sorted(set().union(*per_seed))
        if steps:
            _band(ax, steps, [[s[x] for s in per_seed if x in s] for x in steps], method)
    ax.set_xlabel("RL step")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"mean over seeds {list(cfg.seeds)}; band = min-max", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_accuracy_vs_time(rows: Curves, cfg: CompareConfig, scale: float, out: Path) -> Path:
    """Eval accuracy against training seconds: measured on this CPU, and projected to a GPU.

    At each evaluation the x value is the mean over seeds of the training time up to it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(1.0, "training time on this CPU, measured (s)")]
    if math.isfinite(scale):
        panels.append((scale, f"projected GPU time (s): rollouts x {scale:.2f} (80 % rule)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (factor, xlabel) in zip(axes[0], panels, strict=True):
        for method in cfg.methods:
            acc: list[dict[float, float]] = []
            times: list[dict[float, float]] = []
            for seed in cfg.seeds:
                run_rows = rows.get((method, seed), [])
                acc.append(dict(accuracy_curve(run_rows)))
                spent = [(s + 1, t) for s, t in cumulative_time(run_rows, factor)]
                times.append(dict([(0.0, 0.0), *spent]))
            steps = sorted(set.intersection(*(set(a) for a in acc))) if acc else []
            if not steps:
                continue
            xs = [sum(t[s] for t in times) / len(times) for s in steps]
            _band(ax, xs, [[a[s] for a in acc] for s in steps], method)
        if cfg.target_accuracy is not None:
            ax.axhline(cfg.target_accuracy, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("eval accuracy (mean@k)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"mean over seeds {list(cfg.seeds)}; band = min-max; dashed = target accuracy"
        + ("; right panel is a projection" if len(panels) > 1 else ""),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry: 0 on success, 2 on a bad comparison or run config."""
    from jackpot.config import ConfigError

    prog = "python -m jackpot.experiments.compare"
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument(
        "--config",
        default="configs/compare_paperlike.yaml",
        help="comparison YAML (default: configs/compare_paperlike.yaml)",
    )
    p.add_argument("--out", help="where the tables and plots go (default: the config's out)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a first look: the reference and jackpot, first seed only (a few minutes)",
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. seeds=[0] jobs=1")
    args = p.parse_args(argv)
    overrides = [*args.overrides, *([f"out={args.out}"] if args.out else [])]
    try:
        cfg = load_compare_config(args.config, overrides)
    except ConfigError as exc:
        print(f"{prog}: config error: {exc}", file=sys.stderr)
        return 2
    if args.quick:
        cfg = quick_config(cfg)
    result = run_comparison(cfg)
    print(f"done in {result['grid_wall_s'] / 60:.1f} min: {Path(cfg.out) / 'compare.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
