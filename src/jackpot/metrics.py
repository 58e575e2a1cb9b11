"""Metrics: pure evaluation estimators plus a tracker of torchmetrics means synced across ranks.

Keys are namespaced and stable (``reward/mean``, ``obrs/accept_rate``, ``mismatch/kl_k3``, ...);
the README has the table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

__all__ = [
    "MetricTracker",
    "mean_and_pass_at_k",
    "minibatch_stats",
    "param_checksum",
    "rollout_stats",
    "timing_stats",
    "token_entropy",
]


def mean_and_pass_at_k(
    rewards: Tensor, group_ids: Tensor, threshold: float = 0.5
) -> tuple[Tensor, Tensor]:
    """``(mean@k, pass@k)`` of ``k`` samples per prompt: mean success, and mean of any-success.

    ``rewards`` ``(N,)``, ``group_ids`` ``(N,)``; a sample succeeds when its reward exceeds
    ``threshold`` (rewards here are 0/1).
    """
    success = (rewards > threshold).to(torch.float32)
    groups, inverse = torch.unique(group_ids, return_inverse=True)
    any_success = torch.zeros(len(groups)).scatter_reduce(0, inverse, success, "amax")
    return success.mean(), any_success.mean()


def token_entropy(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean entropy (nats) of ``softmax(logits)`` ``(N, T, V)`` over ``mask`` ``(N, T)``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    ent = -(logp.exp() * logp).sum(-1)
    m = mask.to(ent.dtype)
    return (ent * m).sum() / m.sum().clamp(min=1.0)


def param_checksum(model: nn.Module) -> Tensor:
    """A float64 fingerprint of a model's parameters (sum of sums and of squares)."""
    total = torch.zeros((), dtype=torch.float64)
    for p in model.parameters():
        d = p.detach().double().cpu()
        total += d.sum() + (d * d).sum()
    return total


def rollout_stats(
    rewards: Tensor, group_ids: Tensor, response_mask: Tensor, finished: Tensor
) -> dict[str, Tensor]:
    """Reward, length and data-quality counters of one step's rollouts.

    ``data/zero_adv_group_frac``: groups whose rewards are all equal (no learning signal);
    ``data/empty_response_frac``: responses with no token; ``data/nonfinite_reward_frac``:
    NaN/inf rewards (their update is skipped as non-finite).
    """
    r = rewards.float()
    finite = torch.isfinite(r)
    groups, inverse = torch.unique(group_ids.cpu(), return_inverse=True)
    r_cpu = r.cpu()
    g_max = torch.full((len(groups),), -math.inf).scatter_reduce(0, inverse, r_cpu, "amax")
    g_min = torch.full((len(groups),), math.inf).scatter_reduce(0, inverse, r_cpu, "amin")
    return {
        "reward/mean": r[finite].mean() if bool(finite.any()) else torch.zeros(()),
        "reward/std": r[finite].std() if int(finite.sum()) > 1 else torch.zeros(()),
        "response/length": response_mask.sum(-1).float().mean(),
        "response/truncated_frac": (~finished.bool()).float().mean(),
        "data/zero_adv_group_frac": (g_max == g_min).float().mean(),
        "data/empty_response_frac": (response_mask.sum(-1) == 0).float().mean(),
        "data/nonfinite_reward_frac": (~finite).float().mean(),
    }


def timing_stats(
    rollout_tokens: int, rollout_s: float, train_tokens: int, train_s: float
) -> dict[str, float]:
    """Throughputs and the share of the step spent rolling out."""
    tiny = 1e-9
    return {
        "perf/rollout_tokens_per_s": rollout_tokens / max(rollout_s, tiny),
        "perf/train_tokens_per_s": train_tokens / max(train_s, tiny),
        "perf/rollout_share": rollout_s / max(rollout_s + train_s, tiny),
        "perf/step_s": rollout_s + train_s,
    }


def minibatch_stats(
    loss: Any,
    logits_new: Tensor,
    logits_w: Tensor | None,
    response_mask: Tensor,
    sampled_mask: Tensor,
) -> dict[str, Tensor]:
    """Loss parts and entropies of one minibatch update; parts that did not run are left out."""
    out = {
        "loss/policy": loss.policy.detach(),
        "policy/entropy": token_entropy(logits_new.detach(), response_mask),
        "data/all_rejected_minibatch_frac": (sampled_mask.sum() == 0).float(),
    }
    if loss.rollout is not None:
        out["loss/rollout"] = loss.rollout.detach()
    if loss.distill is not None:
        out["distill/loss"] = loss.distill.detach()
    if logits_w is not None:
        out["rollout/entropy"] = token_entropy(logits_w.detach(), response_mask)
    return out


class MetricTracker(nn.Module):
    """Running means under string keys, one ``MeanMetric`` each, reset after every compute.

    ``compute`` all-reduces across processes (torchmetrics), so every rank must update the
    same keys in a step; NaN observations are ignored.
    """

    def __init__(self) -> None:
        super().__init__()
        self.means = nn.ModuleDict()
        self._updated: set[str] = set()

    def update(self, values: Mapping[str, Tensor | float]) -> None:
        """Add one observation per key."""
        for key, value in values.items():
            name = key.replace("/", "__")
            if name not in self.means:
                self.means[name] = MeanMetric(nan_strategy="ignore").to(self._device())
            metric = cast(MeanMetric, self.means[name])
            metric.update(torch.as_tensor(value, dtype=torch.float32).detach())
            self._updated.add(name)

    def _device(self) -> torch.device:
        """Where the existing metrics live (new ones join them)."""
        for metric in self.means.values():
            return cast(MeanMetric, metric).device
        return torch.device("cpu")

    def compute(self) -> dict[str, float]:
        """Synced means of the keys updated since the last call, as floats; then reset."""
        out: dict[str, float] = {}
        for name in sorted(self._updated):
            metric = cast(MeanMetric, self.means[name])
            out[name.replace("__", "/")] = float(metric.compute())
            metric.reset()
        self._updated.clear()
        return out
