"""Per-run and per-method summaries of a comparison: pure functions over metrics.csv rows.

A run is a list of rows (``{"step": s, key: value, ...}``, as
:func:`jackpot.training.csv_logger.read_metrics` returns them). Nothing here reads files or
runs models, so every figure in the comparison table can be checked on hand-made rows.
Confidence intervals and paired tests need scipy (``pip install jackpot[dev]``); without it
they are NaN and everything else is still computed.
"""

from __future__ import annotations

import itertools
import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "MethodSummary",
    "PairedComparison",
    "RunSummary",
    "Spread",
    "acceptance_key",
    "accuracy_curve",
    "area_under_curve",
    "collapse_step",
    "cumulative_time",
    "gpu_rollout_scale",
    "paired_comparison",
    "series",
    "spread",
    "summarise_method",
    "summarise_run",
    "time_to_reach",
]

Rows = Sequence[dict[str, float]]


def series(rows: Rows, key: str) -> list[tuple[float, float]]:
    """``(step, value)`` of every row that has a finite ``key``."""
    return [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]


def accuracy_curve(rows: Rows) -> list[tuple[float, float]]:
    """``(policy updates, eval accuracy)``: the evaluation before the first update at 0
    (``eval/start_accuracy``, when logged), then the one after RL step ``s`` at ``s + 1``."""
    start = series(rows, "eval/start_accuracy")[:1]
    return [(0.0, v) for _, v in start] + [(s + 1, v) for s, v in series(rows, "eval/accuracy")]


def area_under_curve(points: Sequence[tuple[float, float]]) -> float:
    """Mean height of a piecewise-linear curve over its x-span (the trapezoid area divided by
    the span): the accuracy a run held on average, which a single final point hides."""
    if len(points) < 2:
        return points[0][1] if points else math.nan
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in itertools.pairwise(points))
    return area / (points[-1][0] - points[0][0])


def acceptance_key(rows: Rows) -> str:
    """``obrs/accept_rate`` where the sampler rejects by OBRS/RS, else ``sampler/keep_rate``."""
    return "obrs/accept_rate" if series(rows, "obrs/accept_rate") else "sampler/keep_rate"


def collapse_step(
    points: Sequence[tuple[float, float]],
    frac: float,
    stopped_at: float | None = None,
    reference: float | None = None,
) -> float | None:
    """First step after which a curve stays below ``frac`` x ``reference`` (the starting
    accuracy), or ``frac`` x its best value so far when no reference is given.

    ``points``: ``(step, eval accuracy)`` in step order. A run that drops under the threshold
    and never climbs back above it has collapsed at the first such step; a run stopped early
    (non-finite loss) has collapsed where it stopped. ``None``: no collapse.
    """
    best = -math.inf
    since: float | None = None
    for step, value in points:
        best = max(best, value)
        level = best if reference is None else reference
        below = level > 0 and value < frac * level
        since = (since if since is not None else step) if below else None
    if since is None and stopped_at is not None:
        return stopped_at
    return since


def _step_times(row: dict[str, float]) -> tuple[float, float]:
    """``(rollout seconds, update seconds)`` of one RL step, from ``perf/step_s`` and its share."""
    step_s = row.get("perf/step_s", math.nan)
    share = row.get("perf/rollout_share", math.nan)
    if not (math.isfinite(step_s) and math.isfinite(share)):
        return (0.0, 0.0)
    return (step_s * share, step_s * (1 - share))


def gpu_rollout_scale(reference_runs: Sequence[Rows], share: float) -> float:
    """Factor on measured rollout time that makes it ``share`` of a reference (on-policy) step.

    The projection keeps the measured update times, tokens and the measured relative speed
    of the two models, and only rescales generation so that, summed over the reference runs,
    rollouts are ``share`` of the step (the paper's GPU figure is 80 %). NaN without timings.
    """
    if not 0 < share < 1:
        raise ValueError(f"share={share} must be in (0, 1)")
    rollout = train = 0.0
    for rows in reference_runs:
        for row in rows:
            r, t = _step_times(row)
            rollout, train = rollout + r, train + t
    if rollout <= 0 or train <= 0:
        return math.nan
    return share / (1 - share) * train / rollout


def cumulative_time(rows: Rows, rollout_scale: float = 1.0) -> list[tuple[float, float]]:
    """``(step, seconds of rollout + update up to the end of that step)`` for every row.

    Evaluation, checkpoints and start-up are not counted: this is the training cost.
    ``rollout_scale`` multiplies the rollout part (1 = as measured; see
    :func:`gpu_rollout_scale` for the projected GPU time).
    """
    total = 0.0
    out = []
    for row in rows:
        rollout, update = _step_times(row)
        total += rollout * rollout_scale + update
        out.append((row["step"], total))
    return out


def time_to_reach(
    accuracy: Sequence[tuple[float, float]], times: Sequence[tuple[float, float]], target: float
) -> float:
    """Training seconds until the first evaluation at or above ``target``; NaN if never."""
    at = dict(times)
    for step, value in accuracy:
        if value >= target and step in at:
            return at[step]
    return math.nan


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _t_quantile(confidence: float, df: int) -> float:
    """Two-sided Student-t critical value; NaN without scipy."""
    try:
        from scipy import stats
    except ImportError:
        return math.nan
    return float(stats.t.ppf(0.5 + confidence / 2, df))


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation and 95 % t-interval half-width over seeds."""

    mean: float
    std: float
    ci95: float
    """Half-width of the 95 % confidence interval of the mean (t-distribution, n-1 df);
    NaN with fewer than 2 values or without scipy."""
    n: int


def spread(values: Sequence[float]) -> Spread:
    """:class:`Spread` of the finite ``values`` (NaN fields when none is finite)."""
    finite = [v for v in values if math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return Spread(math.nan, math.nan, math.nan, 0)
    if n == 1:
        return Spread(finite[0], 0.0, math.nan, 1)
    std = statistics.stdev(finite)
    return Spread(_mean(finite), std, _t_quantile(0.95, n - 1) * std / math.sqrt(n), n)


@dataclass(frozen=True)
class PairedComparison:
    """``method - against`` on the seeds both ran: mean difference, its 95 % CI, two tests."""

    method: str
    against: str
    metric: str
    n: int
    diff: Spread
    """Spread of the per-seed differences (its ``ci95`` is the paired t-interval)."""
    p_ttest: float
    """Two-sided paired t-test p-value (NaN when every difference is equal or n < 2)."""
    p_wilcoxon: float
    """Two-sided Wilcoxon signed-rank p-value (exact for small n without ties; NaN when every
    difference is 0 or n < 2). With 5 seeds its smallest possible value is 0.0625."""


def paired_comparison(
    method: str, against: str, metric: str, a: dict[int, float], b: dict[int, float]
) -> PairedComparison:
    """Compare per-seed values ``a`` (of ``method``) with ``b`` (of ``against``) seed by seed."""
    seeds = sorted(s for s in a.keys() & b.keys() if math.isfinite(a[s]) and math.isfinite(b[s]))
    diffs = [a[s] - b[s] for s in seeds]
    p_t = p_w = math.nan
    if len(diffs) >= 2 and len(set(diffs)) > 1:
        try:
            from scipy import stats
        except ImportError:
            pass
        else:
            with warnings.catch_warnings():  # small-sample notes: the p-values are still exact
                warnings.simplefilter("ignore")
                p_t = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
                if any(d != 0 for d in diffs):
                    p_w = float(stats.wilcoxon(diffs).pvalue)
    return PairedComparison(method, against, metric, len(diffs), spread(diffs), p_t, p_w)


@dataclass(frozen=True)
class RunSummary:
    """The figures of one (method, seed) run that go into the table."""

    final_accuracy: float
    """Last ``eval/accuracy`` (mean@k on the held-out split)."""
    first_accuracy: float
    """First logged ``eval/accuracy``."""
    start_accuracy: float
    """``eval/start_accuracy``: the policy before its first update (NaN when not logged)."""
    last_accuracy: float
    """Mean ``eval/accuracy`` of the last ``last_evals`` evaluations."""
    auc_accuracy: float
    """Mean accuracy over the run: :func:`area_under_curve` of :func:`accuracy_curve`."""
    final_pass_at_k: float
    """Last ``eval/pass_at_k``."""
    best_accuracy: float
    """Best ``eval/accuracy`` of the run."""
    kl_k3: float
    """Mean over steps of ``mismatch/kl_k3`` (p_inf vs p_target before correction)."""
    kl_k3_start: float
    """``mismatch/kl_k3`` of the first step (the mismatch the warm starts leave)."""
    kl_k3_end: float
    """Mean ``mismatch/kl_k3`` over the last 10 % of the steps (at least one)."""
    kl_k3_after: float
    """Mean over steps of ``mismatch/kl_k3_after`` (NaN for samplers that do not reject)."""
    acceptance: float
    """Mean over steps of the acceptance (OBRS) or keep rate (other samplers)."""
    ess: float
    """Mean over steps of ``weights/ess``, the effective sample size of the step's weights."""
    zero_adv_frac: float
    """Mean over steps of ``data/zero_adv_group_frac`` (groups whose rewards are all equal)."""
    reward_start: float
    """``reward/mean`` of the first step: the reward of whichever model rolls out."""
    reward_end: float
    """Mean ``reward/mean`` over the last 10 % of the steps."""
    collapse_step: float | None
    """See :func:`collapse_step`."""
    steps: int
    """RL steps the run logged."""
    wall_s: float
    """Wall time of the whole run (model building and warm start included)."""
    train_s: float
    """Rollout + update seconds summed over the steps (no evaluation, no start-up)."""
    rollout_share: float
    """Share of ``train_s`` spent generating rollouts."""
    time_to_target_s: float
    """``train_s`` up to the first evaluation at or above the target accuracy; NaN if never."""
    train_s_gpu: float
    """``train_s`` with the rollout time projected to a GPU (see :func:`gpu_rollout_scale`)."""
    time_to_target_gpu_s: float
    """``time_to_target_s`` on the projected GPU time axis."""


def summarise_run(
    rows: Rows,
    wall_s: float,
    collapse_frac: float,
    stopped_early: bool = False,
    target: float = math.nan,
    rollout_scale: float = math.nan,
    last_evals: int = 3,
) -> RunSummary:
    """Reduce one run's rows to its :class:`RunSummary`.

    ``target``: accuracy whose first reaching is timed; ``rollout_scale``: factor of the
    projected GPU time axis (NaN: no projection); ``last_evals``: evaluations averaged for
    ``last_accuracy``. A collapse is counted against the starting accuracy when it was logged.
    """
    acc = series(rows, "eval/accuracy")
    start = accuracy_curve(rows)[0][1] if series(rows, "eval/start_accuracy") else math.nan
    reward = series(rows, "reward/mean")
    pass_k = series(rows, "eval/pass_at_k")
    kl = series(rows, "mismatch/kl_k3")
    steps = [r["step"] for r in rows]
    times = cumulative_time(rows)
    train_s = times[-1][1] if times else 0.0
    rollout_s = sum(_step_times(r)[0] for r in rows)
    gpu = cumulative_time(rows, rollout_scale) if math.isfinite(rollout_scale) else []
    tail = kl[-max(len(kl) // 10, 1) :]
    return RunSummary(
        final_accuracy=acc[-1][1] if acc else math.nan,
        first_accuracy=acc[0][1] if acc else math.nan,
        start_accuracy=start,
        last_accuracy=_mean([v for _, v in acc[-last_evals:]]),
        auc_accuracy=area_under_curve(accuracy_curve(rows)),
        final_pass_at_k=pass_k[-1][1] if pass_k else math.nan,
        best_accuracy=max((v for _, v in acc), default=math.nan),
        kl_k3=_mean([v for _, v in kl]),
        kl_k3_start=kl[0][1] if kl else math.nan,
        kl_k3_end=_mean([v for _, v in tail]),
        kl_k3_after=_mean([v for _, v in series(rows, "mismatch/kl_k3_after")]),
        acceptance=_mean([v for _, v in series(rows, acceptance_key(rows))]),
        ess=_mean([v for _, v in series(rows, "weights/ess")]),
        zero_adv_frac=_mean([v for _, v in series(rows, "data/zero_adv_group_frac")]),
        reward_start=reward[0][1] if reward else math.nan,
        reward_end=_mean([v for _, v in reward[-max(len(reward) // 10, 1) :]]),
        collapse_step=collapse_step(
            acc,
            collapse_frac,
            stopped_at=steps[-1] if stopped_early and steps else None,
            reference=start if math.isfinite(start) else None,
        ),
        steps=len(rows),
        wall_s=wall_s,
        train_s=train_s,
        rollout_share=rollout_s / train_s if train_s > 0 else math.nan,
        time_to_target_s=time_to_reach(acc, times, target),
        train_s_gpu=gpu[-1][1] if gpu else math.nan,
        time_to_target_gpu_s=time_to_reach(acc, gpu, target),
    )


@dataclass(frozen=True)
class MethodSummary:
    """Spread over seeds of one method's :class:`RunSummary` figures."""

    name: str
    seeds: int
    accuracy: Spread
    """Final eval accuracy."""
    first_accuracy: Spread
    start_accuracy: Spread
    last_accuracy: Spread
    auc_accuracy: Spread
    pass_at_k: Spread
    best_accuracy: Spread
    kl_k3: Spread
    kl_k3_start: Spread
    kl_k3_end: Spread
    kl_k3_after: Spread
    acceptance: Spread
    ess: Spread
    zero_adv_frac: Spread
    reward_start: Spread
    reward_end: Spread
    collapsed: int
    """Seeds that collapsed."""
    collapse_steps: tuple[float, ...]
    reached: int
    """Seeds that reached the target accuracy."""
    time_to_target_s: Spread
    """Over the seeds that reached the target."""
    time_to_target_gpu_s: Spread
    wall_s: float
    """Mean wall time of a run."""
    train_s: float
    """Mean rollout + update seconds of a run."""
    train_s_gpu: float
    rollout_share: float


def summarise_method(name: str, runs: Sequence[RunSummary]) -> MethodSummary:
    """Aggregate one method's runs (one per seed)."""
    if not runs:
        raise ValueError(f"method {name!r} has no finished run to summarise")
    collapses = tuple(r.collapse_step for r in runs if r.collapse_step is not None)
    return MethodSummary(
        name=name,
        seeds=len(runs),
        accuracy=spread([r.final_accuracy for r in runs]),
        first_accuracy=spread([r.first_accuracy for r in runs]),
        start_accuracy=spread([r.start_accuracy for r in runs]),
        last_accuracy=spread([r.last_accuracy for r in runs]),
        auc_accuracy=spread([r.auc_accuracy for r in runs]),
        pass_at_k=spread([r.final_pass_at_k for r in runs]),
        best_accuracy=spread([r.best_accuracy for r in runs]),
        kl_k3=spread([r.kl_k3 for r in runs]),
        kl_k3_start=spread([r.kl_k3_start for r in runs]),
        kl_k3_end=spread([r.kl_k3_end for r in runs]),
        kl_k3_after=spread([r.kl_k3_after for r in runs]),
        acceptance=spread([r.acceptance for r in runs]),
        ess=spread([r.ess for r in runs]),
        zero_adv_frac=spread([r.zero_adv_frac for r in runs]),
        reward_start=spread([r.reward_start for r in runs]),
        reward_end=spread([r.reward_end for r in runs]),
        collapsed=len(collapses),
        collapse_steps=collapses,
        reached=sum(math.isfinite(r.time_to_target_s) for r in runs),
        time_to_target_s=spread([r.time_to_target_s for r in runs]),
        time_to_target_gpu_s=spread([r.time_to_target_gpu_s for r in runs]),
        wall_s=_mean([r.wall_s for r in runs]),
        train_s=_mean([r.train_s for r in runs]),
        train_s_gpu=spread([r.train_s_gpu for r in runs]).mean,
        rollout_share=spread([r.rollout_share for r in runs]).mean,
    )
