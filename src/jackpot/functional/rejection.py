"""Per-token divergence statistics of verl's rejection options (``rollout_rs``); the sequence
options reduce them with :func:`~jackpot.functional.estimators.seq_reduce` (sum, mean, max).

verl writes its estimators of ``KL(p_inf || p_ref)`` in terms of ``l = log(p_ref/p_inf)``
clamped to +-20: ``k1 = -l``, ``k2 = l^2 / 2``, ``k3 = exp(l) - 1 - l``. Mind the sign of k1:
verl's band ``log(lower) <= k1 <= log(upper)`` keeps ratios in ``[1/upper, 1/lower]`` (the
samplers here state k1 bands on the ratio, see docs/math.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from jackpot.functional.estimators import kl_k1, kl_k2, kl_k3
from jackpot.functional.weights import log_ratio

__all__ = [
    "DIVERGENCE_ESTIMATORS",
    "token_divergence",
]

DIVERGENCE_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")
_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def token_divergence(logp_ref: Tensor, logp_inf: Tensor, estimator: str) -> Tensor:
    """verl's per-token ``k1`` / ``k2`` / ``k3`` of ``KL(p_inf || p_ref)`` ``(B, T)``.

    The log-ratio is clamped to +-20 (``-20`` where ``p_ref = 0``) before the estimator, as verl.
    """
    if estimator not in _ESTIMATORS:
        allowed = list(DIVERGENCE_ESTIMATORS)
        raise ValueError(f"estimator must be one of {allowed}, got {estimator!r}")
    lr = log_ratio(logp_ref, logp_inf)
    return _ESTIMATORS[estimator](torch.zeros_like(lr), lr)  # each depends on lr alone
