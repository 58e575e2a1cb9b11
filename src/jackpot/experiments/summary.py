"""Per-run and per-method summaries of a comparison: pure functions over metrics.csv rows.

A run is a list of rows (``{"step": s, key: value, ...}``, as
:func:`jackpot.training.csv_logger.read_metrics` returns them). Nothing here reads files or
runs models, so every figure in the comparison table can be checked on hand-made rows.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "MethodSummary",
    "RunSummary",
    "acceptance_key",
    "collapse_step",
    "series",
    "summarise_method",
    "summarise_run",
]

Rows = Sequence[dict[str, float]]


def series(rows: Rows, key: str) -> list[tuple[float, float]]:
    """``(step, value)`` of every row that has a finite ``key``."""
    return [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]


def acceptance_key(rows: Rows) -> str:
    """``obrs/accept_rate`` where the sampler rejects by OBRS/RS, else ``sampler/keep_rate``."""
    return "obrs/accept_rate" if series(rows, "obrs/accept_rate") else "sampler/keep_rate"


def collapse_step(
    points: Sequence[tuple[float, float]], frac: float, stopped_at: float | None = None
) -> float | None:
    """First step after which a curve stays below ``frac`` x its best value so far.

    ``points``: ``(step, eval accuracy)`` in step order. A run that drops under ``frac`` of
    its running best and never climbs back above it has collapsed at the first such step; a
    run stopped early (non-finite loss) has collapsed where it stopped. ``None``: no collapse.
    """
    best = -math.inf
    since: float | None = None
    for step, value in points:
        best = max(best, value)
        below = best > 0 and value < frac * best
        since = (since if since is not None else step) if below else None
    if since is None and stopped_at is not None:
        return stopped_at
    return since


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


@dataclass(frozen=True)
class RunSummary:
    """The figures of one (method, seed) run that go into the table."""

    final_accuracy: float
    """Last ``eval/accuracy`` (mean@k on the held-out split)."""
    final_pass_at_k: float
    """Last ``eval/pass_at_k``."""
    best_accuracy: float
    """Best ``eval/accuracy`` of the run."""
    kl_k3: float
    """Mean over steps of ``mismatch/kl_k3`` (p_inf vs p_target before correction)."""
    kl_k3_after: float
    """Mean over steps of ``mismatch/kl_k3_after`` (NaN for samplers that do not reject)."""
    acceptance: float
    """Mean over steps of the acceptance (OBRS) or keep rate (other samplers)."""
    collapse_step: float | None
    """See :func:`collapse_step`."""
    steps: int
    """RL steps the run logged."""
    wall_s: float
    """Wall time of the whole run (model building and warm start included)."""
    rollout_share: float
    """Share of the RL steps' time spent generating rollouts (step-time weighted)."""


def summarise_run(
    rows: Rows, wall_s: float, collapse_frac: float, stopped_early: bool = False
) -> RunSummary:
    """Reduce one run's rows to its :class:`RunSummary`."""
    acc = series(rows, "eval/accuracy")
    pass_k = series(rows, "eval/pass_at_k")
    steps = [r["step"] for r in rows]
    step_s = [r.get("perf/step_s", 0.0) for r in rows]
    rollout_s = [r.get("perf/step_s", 0.0) * r.get("perf/rollout_share", 0.0) for r in rows]
    total = sum(step_s)
    return RunSummary(
        final_accuracy=acc[-1][1] if acc else math.nan,
        final_pass_at_k=pass_k[-1][1] if pass_k else math.nan,
        best_accuracy=max((v for _, v in acc), default=math.nan),
        kl_k3=_mean([v for _, v in series(rows, "mismatch/kl_k3")]),
        kl_k3_after=_mean([v for _, v in series(rows, "mismatch/kl_k3_after")]),
        acceptance=_mean([v for _, v in series(rows, acceptance_key(rows))]),
        collapse_step=collapse_step(
            acc, collapse_frac, stopped_at=steps[-1] if stopped_early and steps else None
        ),
        steps=len(rows),
        wall_s=wall_s,
        rollout_share=sum(rollout_s) / total if total > 0 else math.nan,
    )


@dataclass(frozen=True)
class MethodSummary:
    """Mean and spread over seeds of one method's :class:`RunSummary`."""

    name: str
    seeds: int
    accuracy: tuple[float, float]
    """(mean, sample std) of the final eval accuracy."""
    pass_at_k: tuple[float, float]
    best_accuracy: tuple[float, float]
    kl_k3: tuple[float, float]
    kl_k3_after: tuple[float, float]
    acceptance: tuple[float, float]
    collapsed: int
    """Seeds that collapsed."""
    collapse_steps: tuple[float, ...]
    wall_s: float
    """Mean wall time of a run."""
    rollout_share: float


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return (math.nan, math.nan)
    return (_mean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0)


def summarise_method(name: str, runs: Sequence[RunSummary]) -> MethodSummary:
    """Aggregate one method's runs (one per seed)."""
    if not runs:
        raise ValueError(f"method {name!r} has no finished run to summarise")
    collapses = tuple(r.collapse_step for r in runs if r.collapse_step is not None)
    return MethodSummary(
        name=name,
        seeds=len(runs),
        accuracy=_mean_std([r.final_accuracy for r in runs]),
        pass_at_k=_mean_std([r.final_pass_at_k for r in runs]),
        best_accuracy=_mean_std([r.best_accuracy for r in runs]),
        kl_k3=_mean_std([r.kl_k3 for r in runs]),
        kl_k3_after=_mean_std([r.kl_k3_after for r in runs]),
        acceptance=_mean_std([r.acceptance for r in runs]),
        collapsed=len(collapses),
        collapse_steps=collapses,
        wall_s=_mean([r.wall_s for r in runs]),
        rollout_share=_mean([r.rollout_share for r in runs]),
    )
