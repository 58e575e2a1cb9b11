"""The end-of-run plot: reward, mismatch KL and acceptance over RL steps."""

from __future__ import annotations

from pathlib import Path

from jackpot.training.csv_logger import read_metrics

__all__ = ["plot_run"]

_PANELS = (
    ("reward", ("reward/mean", "eval/accuracy")),
    ("mismatch KL (k3, nats)", ("mismatch/kl_k3", "mismatch/kl_k3_after")),
    ("acceptance", ("obrs/accept_rate", "sampler/keep_rate")),
)


def plot_run(metrics_csv: Path, out: Path, title: str = "") -> Path:
    """Write a three-panel PNG of the run's metrics to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_csv)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (label, keys) in zip(axes, _PANELS, strict=True):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="." if len(pts) < 30 else None, label=key)
        ax.set_xlabel("RL step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
