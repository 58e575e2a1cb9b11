"""Importance weights and masks of the baselines, as verl defines them where it has them.

Token level: plain IS ``p_ref/p_inf`` (AReaL), truncated IS ``min(p_ref/p_inf, C)`` (Flash-RL,
verl ``token_tis``: truncation from above only), IcePop's band mask ``alpha <= ratio <= beta``.
Sequence level: truncated product of the token ratios (verl's sequence IS weight) and the
geometric-mean mask (verl's ``seq_mean_k1`` rejection). Log-ratios are clamped to +-20 (verl's
safety bound) where verl clamps them: the sequence weight sums the raw token log-ratios and
clamps the sum; the geometric mask clamps each token's log-ratio, then averages.
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


def _raw_log_ratio(logp_num: Tensor, logp_den: Tensor) -> Tensor:
    """Unclamped ``log p_num - log p_den``; ``-inf`` wherever ``p_num = 0`` (even if ``p_den = 0``).

    ``p_num = 0`` makes the ratio 0 whatever the denominator, so ``-inf - (-inf)`` is ``-inf``,
    not NaN; ``p_num > 0 = p_den`` gives ``+inf``.
    """
    neg_inf = torch.full_like(logp_num, float("-inf"))
    return torch.where(logp_num == float("-inf"), neg_inf, logp_num - logp_den)


def _masked_log_ratio_sum(logp_ref: Tensor, logp_inf: Tensor, mask: Tensor) -> Tensor:
    """Sum of the raw token log-ratios over ``mask`` -> ``(...)``; ``-inf`` if a token has p_ref 0.

    Positions outside ``mask`` are selected away (``torch.where``), so whatever padding holds
    (``-inf``, NaN) never reaches the sum. A response with a ``p_ref = 0`` token is impossible
    under ``p_ref``, so its product of ratios is 0 even if another token has ``p_inf = 0``.
    """
    on = mask != 0
    lr = torch.where(on, _raw_log_ratio(logp_ref, logp_inf), torch.zeros_like(logp_ref))
    impossible = (on & (logp_ref == float("-inf"))).any(-1)
    total = lr.sum(-1)
    return torch.where(impossible, torch.full_like(total, float("-inf")), total)


def log_ratio(logp_num: Tensor, logp_den: Tensor) -> Tensor:
    """``log p_num - log p_den`` clamped to ``[-20, 20]``; ``-20`` where ``p_num = 0``."""
    return _raw_log_ratio(logp_num, logp_den).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


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
    """``log prod_t p_ref/p_inf`` over the response, clamped to ``[-20, 20]`` -> ``(B,)``.

    The raw token log-ratios are summed first and only the sum is clamped (verl ``seq_tis``).
    """
    total = _masked_log_ratio_sum(logp_ref, logp_inf, mask)
    return total.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def geo_mean_log_ratio(logp_ref: Tensor, logp_inf: Tensor, mask: Tensor) -> Tensor:
    """Mean over the response of the token log-ratios, each clamped to ``[-20, 20]`` -> ``(B,)``.

    The log of the geometric-mean ratio as verl 0.9.1's ``seq_mean_k1`` forms it (clamp per
    token, then average, so one extreme token moves the mean by at most ``20 / n``); 0 for an
    empty response. Positions outside ``mask`` are selected away, whatever they hold.
    """
    on = mask != 0
    lr = torch.where(on, log_ratio(logp_ref, logp_inf), torch.zeros_like(logp_ref))
    n = on.sum(-1).clamp(min=1).to(logp_ref.dtype)
    return lr.sum(-1) / n
