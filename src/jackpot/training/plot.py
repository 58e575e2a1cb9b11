"""The end-of-run plot: reward and accuracy, mismatch KL, and acceptance over RL steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jackpot.training.csv_logger import read_metrics

__all__ = ["plot_run"]

_CAPTION = (
    "rollout reward: reward of the samples the step trains on (drawn by the rollout model); "
    "eval accuracy: the policy's own samples on the held-out split (mean@k)"
)


def _series(rows: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    """Steps and values of ``key`` over the rows that logged it."""
    pts = [(r["step"], r[key]) for r in rows if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_run(metrics_csv: Path, out: Path, title: str = "", budget: float | None = None) -> Path:
    """Write a three-panel PNG of the run's metrics to ``out``.

    ``budget``: the OBRS target acceptance (``sampler.budget``), drawn as a horizontal line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_csv)
    fig, (ax_reward, ax_kl, ax_accept) = plt.subplots(1, 3, figsize=(14, 4.2))
    marker = "." if len(rows) < 30 else None

    _line(ax_reward, rows, "reward/mean", "rollout reward (rollout model's samples)", marker)
    _line(ax_reward, rows, "eval/accuracy", "eval accuracy (policy, mean@k)", "o")
    values = _series(rows, "reward/mean")[1] + _series(rows, "eval/accuracy")[1]
    if values and min(values) >= 0 and max(values) <= 1:
        ax_reward.set_ylim(-0.02, 1.02)
    _finish(ax_reward, "reward and accuracy", "reward / accuracy")

    _line(ax_kl, rows, "mismatch/kl_k3", "before OBRS: KL(p_inf || p_target)", marker)
    _line(ax_kl, rows, "mismatch/kl_k3_after", "after OBRS: accepted tokens", marker)
    ax_kl.set_ylim(bottom=0)
    _finish(ax_kl, "mismatch KL (k3)", "KL (nats per token)")

    accept = _series(rows, "obrs/accept_rate")
    keep = _series(rows, "sampler/keep_rate")
    if accept[0]:  # thick and pale under the keep rate, which equals it for obrs
        ax_accept.plot(*accept, lw=4, alpha=0.35, color="tab:blue", label="obrs/accept_rate")
    if keep[0]:
        same = " (= accept rate)" if keep[1] == accept[1] else ""
        ax_accept.plot(
            *keep, lw=1.2, ls="--", marker=marker, color="tab:red", label=f"sampler/keep_rate{same}"
        )
    if budget is not None:
        ax_accept.axhline(budget, color="black", ls=":", lw=1.2, label=f"budget {budget:g}")
    shown = accept[1] + keep[1] + ([budget] if budget is not None else [])
    if shown:
        low, high = min(shown), max(shown)
        pad = max(0.02, 0.15 * (high - low))
        ax_accept.set_ylim(max(0.0, low - pad), min(1.0, high + pad) + 0.01)
    _finish(ax_accept, "acceptance", "fraction of response tokens")

    if title:
        fig.suptitle(title)
    fig.text(0.5, 0.01, _CAPTION, ha="center", fontsize=8, color="0.3")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _line(ax: Any, rows: list[dict[str, float]], key: str, label: str, marker: Any) -> None:
    """Plot ``key`` over RL steps when the run logged it."""
    xs, ys = _series(rows, key)
    if xs:
        ax.plot(xs, ys, marker=marker, label=label)


def _finish(ax: Any, title: str, ylabel: str) -> None:
    """Axis labels, grid and a legend (when something was drawn)."""
    ax.set_title(title)
    ax.set_xlabel("RL step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
