"""Importance weights and masks of the baselines, as verl defines them where it has them.

Token level: plain IS ``p_ref/p_inf`` (AReaL), truncated IS ``min(p_ref/p_inf, C)`` (Flash-RL,
verl ``token_tis``: truncation from above only), IcePop's band mask ``alpha <= ratio <= beta``.
Sequence level: truncated product of the token ratios (verl ``seq_tis``) and the geometric-mean
mask (verl ``geo_mask``). Log-ratios are clamped to +-20 before ``exp`` (verl's safety bound).
"""

from __future__ import annotations

import torch
from torch import Tensor

from jackpot.functional.estimators import LOG_RATIO_CLAMP

__all__ = [
    "geo_mean_log_ratio",
    "icepop_mask",
    "is_weight",
    "log_ratio",
    "seq_log_ratio",
    "tis_weight",
]


def log_ratio(logp_num: Tensor, logp_den: Tensor) -> Tensor:
    """``log p_num - log p_den`` clamped to ``[-20, 20]``; ``-20`` where ``p_num = 0``."""
    diff = torch.where(
        logp_num == float("-inf"), torch.full_like(logp_num, -LOG_RATIO_CLAMP), logp_num - logp_den
    )
    return diff.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def is_weight(logp_ref: Tensor, logp_inf: Tensor) -> Tensor:
    """Plain importance weight ``p_ref(a_t) / p_inf(a_t)`` per token ``(B, T)``."""
    return log_ratio(logp_ref, logp_inf).exp()


def tis_weight(logp_ref: Tensor, logp_inf: Tensor, cap: float) -> Tensor:
    """Truncated IS ``min(p_ref/p_inf, cap)`` per token ``(B, T)``."""
    return is_weight(logp_ref, logp_inf).clamp(max=cap)


def icepop_mask(logp_ref: Tensor, logp_inf: Tensor, alpha: float, beta: float) -> Tensor:
    """IcePop: 1 where ``alpha <= p_ref/p_inf <= beta``, else 0 (token masked) ``(B, T)``."""
    ratio = is_weight(logp_ref, logp_inf)
    return ((ratio >= alpha) & (ratio <= beta)).to(logp_ref.dtype)


def seq_log_ratio(logp_ref: Tensor, logp_inf: Tensor, mask: Tensor) -> Tensor:
    """Sum of token log-ratios over the response, ``log prod_t p_ref/p_inf`` -> ``(B,)``."""
    return (log_ratio(logp_ref, logp_inf) * mask).sum(-1)


def geo_mean_log_ratio(logp_ref: Tensor, logp_inf: Tensor, mask: Tensor) -> Tensor:
    """Mean token log-ratio of each response (log of the geometric mean ratio) -> ``(B,)``."""
    return seq_log_ratio(logp_ref, logp_inf, mask) / mask.sum(-1).clamp(min=1.0)
