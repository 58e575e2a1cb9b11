"""Importance weights and masks of the baselines, as verl defines them where it has them.

Token level: plain IS ``p_ref/p_inf`` (AReaL), truncated IS ``min(p_ref/p_inf, C)`` (Flash-RL,
verl ``token_tis``: truncation from above only), IcePop's band mask ``alpha <= ratio <= beta``.
Sequence level: truncated product of the token ratios (verl's sequence IS weight) and the
geometric-mean mask (verl's ``seq_mean_k1`` rejection), the sequence IcePop band. Batch
normalisation of a weight to mean 1 (verl's ``rollout_is_batch_normalize``) and the chi-square
divergences verl reports. Log-ratios are clamped to +-20 (verl's safety bound) where verl
clamps them: the sequence weight sums the raw token log-ratios and clamps the sum; the
geometric mask clamps each token's log-ratio, then averages.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from jackpot.functional.estimators import LOG_RATIO_CLAMP, masked_mean, seq_reduce

__all__ = [
    "chi2_seq",
    "chi2_token",
    "geo_mean_log_ratio",
    "icepop_mask",
    "is_weight",
    "log_ratio",
    "mean_normalize",
    "seq_icepop_mask",
    "seq_log_ratio",
    "tis_weight",
]

# verl leaves weights whose batch mean is below this unnormalised (nothing to rescale).
_NORMALIZE_MIN_MEAN = 1e-8


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
    return seq_reduce(log_ratio(logp_ref, logp_inf), mask, "mean")


def seq_icepop_mask(
    logp_ref: Tensor, logp_inf: Tensor, mask: Tensor, alpha: float, beta: float
) -> Tensor:
    """Sequence IcePop: 1 where ``alpha <= prod_t p_ref/p_inf <= beta`` (the clamped
    :func:`seq_log_ratio`), else 0 -> ``(B,)``."""
    log_w = seq_log_ratio(logp_ref, logp_inf, mask)
    return ((log_w >= math.log(alpha)) & (log_w <= math.log(beta))).to(logp_ref.dtype)


def mean_normalize(weights: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``weights / mean`` with ``mean`` their mean over ``mask != 0`` (any shape), and ``mean``.

    verl's ``rollout_is_batch_normalize``: the batch's weights then average exactly 1. A mean
    below 1e-8 (every weight ~0, or an empty mask) leaves the weights as they are.
    """
    mean = masked_mean(weights, mask)
    ok = mean > _NORMALIZE_MIN_MEAN
    return weights / torch.where(ok, mean, torch.ones_like(mean)), mean


def chi2_token(logp_ref: Tensor, logp_inf: Tensor, mask: Tensor) -> Tensor:
    """Token chi-square ``E[w_t^2] - 1`` of the (clamped) ratios ``p_ref/p_inf`` over ``mask``
    -> scalar (verl's ``chi2_token``); 0 when the two policies agree."""
    return masked_mean(torch.exp(2.0 * log_ratio(logp_ref, logp_inf)), mask) - 1.0


def chi2_seq(logp_ref: Tensor, logp_inf: Tensor, mask: Tensor) -> Tensor:
    """Sequence chi-square ``E[(prod_t w_t)^2] - 1`` over the sequences with a ``mask`` token
    -> scalar (verl's ``chi2_seq``, which also averages over empty rows)."""
    log_w = seq_log_ratio(logp_ref, logp_inf, mask)  # (B,), clamped to +-20
    return masked_mean(torch.exp(2.0 * log_w), (mask != 0).any(-1)) - 1.0
