"""Metrics: pure evaluation estimators plus a tracker of running means synced across ranks.

Keys are namespaced and stable (``reward/mean``, ``obrs/accept_rate``, ``mismatch/kl_k3``, ...);
docs/metrics.md has the table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from jackpot.functional import entropy_from_logits

__all__ = [
    "MetricTracker",
    "device_memory_stats",
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
    ent = entropy_from_logits(logits)  # (N, T), in row chunks
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
    ``data/empty_response_frac``: responses with no token. Rewards are finite: a reward
    function's NaN or inf is refused (``checked_reward``), as is a rollout file's.
    """
    r = rewards.float()
    groups, inverse = torch.unique(group_ids.cpu(), return_inverse=True)
    r_cpu = r.cpu()
    g_max = torch.full((len(groups),), -math.inf).scatter_reduce(0, inverse, r_cpu, "amax")
    g_min = torch.full((len(groups),), math.inf).scatter_reduce(0, inverse, r_cpu, "amin")
    return {
        "reward/mean": r.mean() if r.numel() else torch.zeros(()),
        "reward/std": r.std() if r.numel() > 1 else torch.zeros(()),
        "response/length": response_mask.sum(-1).float().mean(),
        "response/truncated_frac": (~finished.bool()).float().mean(),
        "data/zero_adv_group_frac": (g_max == g_min).float().mean(),
        "data/empty_response_frac": (response_mask.sum(-1) == 0).float().mean(),
    }


def timing_stats(
    rollout_tokens: int,
    rollout_s: float,
    train_tokens: int,
    train_s: float,
    generate_s: float | None = None,
) -> dict[str, float]:
    """Throughputs and the share of the step spent rolling out.

    ``generate_s``: seconds the engine took to sample the rollouts when that is not the
    step's ``rollout_s`` (a rollout worker sampled them while the trainer waited ``rollout_s``).
    """
    tiny = 1e-9
    sampling_s = rollout_s if generate_s is None else generate_s
    return {
        "perf/rollout_tokens_per_s": rollout_tokens / max(sampling_s, tiny),
        "perf/train_tokens_per_s": train_tokens / max(train_s, tiny),
        "perf/rollout_share": rollout_s / max(rollout_s + train_s, tiny),
        "perf/step_s": rollout_s + train_s,
    }


def device_memory_stats(device: torch.device) -> dict[str, float]:
    """Peak memory allocated on a CUDA device since the run started (GB); nothing on CPU."""
    if device.type != "cuda":
        return {}
    return {"perf/peak_mem_gb": torch.cuda.max_memory_allocated(device) / 1e9}


def minibatch_stats(
    loss: Any,
    logits_new: Tensor,
    logits_w: Tensor | None,
    response_mask: Tensor,
) -> dict[str, Tensor]:
    """Loss parts and entropies of one (micro-)batch update; parts that did not run are left out."""
    out = {
        "loss/policy": loss.policy.detach(),
        "policy/entropy": token_entropy(logits_new.detach(), response_mask),
    }
    if loss.rollout is not None:
        out["loss/rollout"] = loss.rollout.detach()
    if loss.distill is not None:
        out["distill/loss"] = loss.distill.detach()
    if logits_w is not None:
        out["rollout/entropy"] = token_entropy(logits_w.detach(), response_mask)
    return out


class MetricTracker(nn.Module):
    """Running means under string keys, reset after every :meth:`compute`; NaNs are ignored.

    An update costs about a microsecond per key: floats are summed at once and tensors are
    only kept (no host sync per key). :meth:`compute` reduces everything into one ``(2, K)``
    tensor of sums and counts and, with several processes, all-reduces it in one call, so
    every rank must update the same keys in a step. A ``weight`` makes a mean over uneven
    shares (a rank's evaluated prompts) the mean over all of them.
    """

    anchor: Tensor

    def __init__(self) -> None:
        """Empty; the non-persistent ``anchor`` buffer follows the module to its device."""
        super().__init__()
        self.register_buffer("anchor", torch.zeros(0), persistent=False)
        self._sums: dict[str, list[float]] = {}  # key -> [sum, count] of the float observations
        # tensor observations and their weights, reduced in compute
        self._tensors: list[tuple[str, Tensor, float]] = []

    def update(self, values: Mapping[str, Tensor | float], weight: float = 1.0) -> None:
        """Add one scalar observation per key, counted ``weight`` times (e.g. a mean over that
        many items)."""
        for key, value in values.items():
            if isinstance(value, Tensor):
                self._tensors.append((key, value.detach().reshape(()), weight))
                continue
            acc = self._sums.setdefault(key, [0.0, 0.0])
            if not math.isnan(value):
                acc[0] += value * weight
                acc[1] += weight

    def compute(self) -> dict[str, float]:
        """Means (synced across processes) of the keys updated since the last call; then reset."""
        keys = sorted(self._sums.keys() | {key for key, _, _ in self._tensors})
        if not keys:
            return {}
        device = self.anchor.device
        acc = [self._sums.get(k, [0.0, 0.0]) for k in keys]
        totals = torch.tensor([[s for s, _ in acc], [c for _, c in acc]], dtype=torch.float64)
        totals = totals.to(device)  # (2, K): sums, counts
        if self._tensors:
            position = {key: i for i, key in enumerate(keys)}
            index = torch.tensor([position[key] for key, _, _ in self._tensors], device=device)
            obs = torch.stack([value.to(device, torch.float64) for _, value, _ in self._tensors])
            weights = torch.tensor([w for _, _, w in self._tensors], dtype=torch.float64)
            weights = torch.where(torch.isnan(obs), 0.0, weights.to(device))
            totals[0].index_add_(0, index, torch.nan_to_num(obs, nan=0.0) * weights)
            totals[1].index_add_(0, index, weights)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(totals)
        means = (totals[0] / totals[1]).tolist()  # 0 / 0 = NaN: every observation was NaN
        self._sums.clear()
        self._tensors.clear()
        return dict(zip(keys, means, strict=True))
