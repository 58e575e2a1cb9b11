"""``python -m jackpot.experiments.compare --config configs/compare.yaml``: methods x seeds.

Runs every method of the comparison (on-policy, decoupled with none / TIS / IcePop / OBRS, ...)
for every seed with identical data, models and step budgets: each run is one
``python -m jackpot.fit --config <method's config> <shared overrides> <method's overrides>``
subprocess, and the shipped method configs all derive from ``configs/default.yaml``.
Finished runs are reused and interrupted ones resumed, so a rerun after a crash only does what
is missing. Writes ``compare.md`` (table), ``compare.json``, ``compare_metrics.csv`` (the
curves) and one PNG per curve to ``out``.
"""

from __future__ import annotations

import argparse
import csv
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
    acceptance_key,
    series,
    summarise_method,
    summarise_run,
)

__all__ = ["CompareConfig", "load_compare_config", "main", "run_comparison"]

CURVES = {
    "eval_accuracy": ("eval/accuracy", "eval accuracy (mean@k)"),
    "mismatch_kl": ("mismatch/kl_k3", "mismatch KL(p_inf || policy), k3 (nats)"),
    "acceptance": (None, "acceptance (OBRS) / kept tokens (others)"),
    "reward": ("reward/mean", "rollout reward"),
}
"""Plot name -> (metric key, or None for the acceptance/keep rate, y label)."""

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

    out: str = "docs/results"
    """Where the table, JSON, curves and plots go."""
    runs_dir: str = "runs/compare"
    """Where each run's own ``run.dir`` lives (metrics, checkpoints, logs)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """``run.seed`` of each repetition (rollouts, acceptance draws, prompt order)."""
    jobs: int = 2
    """Runs in parallel; each gets ``cores // jobs`` torch threads."""
    overrides: list[str] = field(default_factory=list)
    """Dotted overrides applied to every run (the shared setting)."""
    methods: dict[str, MethodConfig] = field(default_factory=dict)
    """Method name -> its run config and overrides, in table order."""
    reference: str = "on_policy"
    """Method the others are compared with in the table (accuracy difference)."""
    collapse_frac: float = 0.5
    """A run has collapsed once its eval accuracy stays below this share of its best so far."""

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
        if self.reference not in self.methods:
            raise ValueError(
                f"reference={self.reference!r} is not a method; choose one of {list(self.methods)}"
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


def run_dir(cfg: CompareConfig, method: str, seed: int) -> Path:
    """The ``run.dir`` of one (method, seed)."""
    return Path(cfg.runs_dir) / method / f"seed{seed}"


def run_overrides(cfg: CompareConfig, method: str, seed: int) -> list[str]:
    """Shared overrides, then the method's, then seed, run dir and thread count."""
    threads = max((os.cpu_count() or 1) // cfg.jobs, 1)
    return [
        *cfg.overrides,
        *cfg.methods[method].overrides,
        f"run.seed={seed}",
        f"run.dir={run_dir(cfg, method, seed)}",
        "run.plot=false",
        f"trainer.num_threads={threads}",
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


def _prime_warm_start(cfg: CompareConfig) -> None:
    """Warm-start (or load) every distinct pair of models once, before runs go in parallel.

    With the runs' own thread count: torch's default oversubscribes a busy machine badly.
    """
    import torch

    from jackpot.config import load_config
    from jackpot.fit import build_module

    seen: set[str] = set()
    for method in cfg.methods:
        run_cfg = load_config(cfg.methods[method].config, run_overrides(cfg, method, cfg.seeds[0]))
        parts = (run_cfg.policy, run_cfg.rollout_model, run_cfg.warmstart, run_cfg.task)
        key = json.dumps([asdict(p) for p in parts], sort_keys=True)
        if key not in seen:
            seen.add(key)
            torch.set_num_threads(run_cfg.trainer.num_threads or 1)
            build_module(run_cfg)


def run_comparison(cfg: CompareConfig) -> dict[str, Any]:
    """Run every (method, seed), then write the table, JSON, curves and plots to ``cfg.out``."""
    from jackpot.training.csv_logger import read_metrics

    _prime_warm_start(cfg)
    jobs = [(m, s) for m in cfg.methods for s in cfg.seeds]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=cfg.jobs) as pool:
        records = list(pool.map(lambda job: _run_one(cfg, *job), jobs))
    elapsed = time.perf_counter() - start
    rows = {
        (r["method"], r["seed"]): read_metrics(run_dir(cfg, r["method"], r["seed"]) / "metrics.csv")
        for r in records
    }
    runs = {
        key: summarise_run(rows[key], r["wall_s"], cfg.collapse_frac, r["returncode"] == 1)
        for key, r in zip(rows, records, strict=True)
    }
    methods = [
        summarise_method(m, [runs[(m, s)] for s in cfg.seeds if rows[(m, s)]]) for m in cfg.methods
    ]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    wall = sum(r["wall_s"] for r in records)
    result = {
        "config": asdict(cfg),
        "grid_wall_s": elapsed,
        "runs_wall_s": wall,
        "methods": [asdict(m) for m in methods],
        "runs": [{"method": m, "seed": s, **asdict(v)} for (m, s), v in runs.items()],
    }
    (out / "compare.json").write_text(json.dumps(_finite_or_none(result), indent=2))
    (out / "compare.md").write_text(markdown_table(methods, cfg, wall))
    _write_curves(out / "compare_metrics.csv", rows)
    for name, (key, label) in CURVES.items():
        plot_curves(rows, cfg, key, label, out / f"compare_{name}.png")
    return result


def _finite_or_none(value: Any) -> Any:
    """``value`` with NaN/inf floats as None, so ``compare.json`` is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _fmt(pair: tuple[float, float], digits: int = 3) -> str:
    mean, std = pair
    return "n/a" if not math.isfinite(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(methods: list[MethodSummary], cfg: CompareConfig, runs_wall_s: float) -> str:
    """The comparison as a markdown table (mean ± sample std over seeds).

    ``runs_wall_s``: the wall times of all runs added up (reused runs count with the time
    they took when they ran).
    """
    ref = next(m for m in methods if m.name == cfg.reference)
    lines = [
        f"Seeds {list(cfg.seeds)}; mean ± sample std over seeds. Accuracy = mean@k of the policy "
        f"on the held-out split at the last evaluation; Δ vs `{cfg.reference}`. Collapse: eval "
        f"accuracy stays below {cfg.collapse_frac:.0%} of its best so far. All runs: "
        f"{runs_wall_s / 60:.1f} min of wall time added up, about "
        f"{runs_wall_s / 60 / cfg.jobs:.1f} min with {cfg.jobs} in parallel.",
        "",
        "| method | eval acc (mean@k) | Δ acc | pass@k | best acc | mismatch KL k3 | "
        "KL after OBRS | acceptance / kept | collapsed (steps) | wall / run | rollout share |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in methods:
        delta = m.accuracy[0] - ref.accuracy[0]
        collapsed = f"{m.collapsed}/{m.seeds}"
        if m.collapse_steps:
            collapsed += " (" + ", ".join(f"{s:.0f}" for s in m.collapse_steps) + ")"
        lines.append(
            f"| `{m.name}` | {_fmt(m.accuracy)} | {delta:+.3f} | {_fmt(m.pass_at_k)} | "
            f"{_fmt(m.best_accuracy)} | {_fmt(m.kl_k3, 4)} | {_fmt(m.kl_k3_after, 4)} | "
            f"{_fmt(m.acceptance)} | {collapsed} | {m.wall_s:.0f} s | {m.rollout_share:.0%} |"
        )
    lines.append("")
    lines.append(f"Shared overrides: `{' '.join(cfg.overrides) or '(none)'}`. Methods:")
    lines.append("")
    for name, method in cfg.methods.items():
        extra = f" {' '.join(method.overrides)}" if method.overrides else ""
        lines.append(f"- `{name}`: `configs/{Path(method.config).name}{extra}`")
    return "\n".join(lines) + "\n"


def _write_curves(path: Path, rows: dict[tuple[str, int], list[dict[str, float]]]) -> None:
    """Long-format curves (method, seed, step, key, value) of the plotted and tabled keys."""
    keys = (
        "eval/accuracy",
        "eval/pass_at_k",
        "reward/mean",
        "mismatch/kl_k3",
        "mismatch/kl_k3_after",
        "obrs/accept_rate",
        "sampler/keep_rate",
        "perf/step_s",
        "perf/rollout_share",
    )
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "seed", "step", "key", "value"])
        for (method, seed), run_rows in rows.items():
            for key in keys:
                for step, value in series(run_rows, key):
                    writer.writerow([method, seed, int(step), key, f"{value:.6g}"])


def plot_curves(
    rows: dict[tuple[str, int], list[dict[str, float]]],
    cfg: CompareConfig,
    key: str | None,
    label: str,
    out: Path,
) -> Path:
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
            per_seed.append(dict(series(run_rows, k)))
        steps = sorted(set().union(*per_seed))
        if not steps:
            continue
        values = [[s[x] for s in per_seed if x in s] for x in steps]
        mean = [sum(v) / len(v) for v in values]
        (line,) = ax.plot(steps, mean, label=method, marker="." if len(steps) < 15 else None)
        ax.fill_between(
            steps,
            [min(v) for v in values],
            [max(v) for v in values],
            color=line.get_color(),
            alpha=0.15,
            linewidth=0,
        )
    ax.set_xlabel("RL step")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"mean over seeds {list(cfg.seeds)}; band = min-max", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry: 0 on success, 2 on a bad comparison or run config."""
    from jackpot.config import ConfigError

    prog = "python -m jackpot.experiments.compare"
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="comparison YAML (e.g. configs/compare.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. seeds=[0] jobs=1")
    args = p.parse_args(argv)
    try:
        cfg = load_compare_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"{prog}: config error: {exc}", file=sys.stderr)
        return 2
    result = run_comparison(cfg)
    print(f"done in {result['grid_wall_s'] / 60:.1f} min: {Path(cfg.out) / 'compare.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
