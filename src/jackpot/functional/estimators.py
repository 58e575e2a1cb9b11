"""Per-token KL estimators and weight diagnostics on sampled tokens.

With ``x ~ q`` and ``log_ratio = log p(x) - log q(x)``, Schulman's estimators of
``KL(q || p)`` are k1 = ``-log_ratio`` (unbiased, high variance), k2 = ``log_ratio**2 / 2``
(biased, low variance) and k3 = ``exp(log_ratio) - 1 - log_ratio`` (unbiased, >= 0).
For the actor-policy mismatch ``q = p_inf`` (tokens were sampled from it) and ``p`` the policy.
Each depends on ``log_ratio`` alone. The "+" variants (verl's ``k1+``, ``k3+``) keep the value
of their estimator but take k2's gradient, the one whose expectation is the KL's gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "SEQ_REDUCTIONS",
    "effective_sample_size",
    "kl_abs",
    "kl_floor",
    "kl_k1",
    "kl_k1_plus",
    "kl_k2",
    "kl_k3",
    "kl_k3_plus",
    "kl_k3_reverse",
    "log_perplexity",
    "masked_mean",
    "seq_reduce",
]

# verl clamps log-ratios to +-20 before exp; a larger |log ratio| carries no usable signal.
LOG_RATIO_CLAMP = 20.0
SEQ_REDUCTIONS: tuple[str, ...] = ("sum", "mean", "max")


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over ``mask != 0`` -> scalar; 0 (not NaN) for an empty mask.

    Masked-out entries are selected away, not multiplied by 0: padding may hold ``inf`` or
    NaN, and ``0 * inf`` is NaN.
    """
    on = mask != 0
    total = torch.where(on, values, torch.zeros_like(values)).sum()
    return total / on.sum().clamp(min=1).to(values.dtype)


def seq_reduce(values: Tensor, mask: Tensor, reduce: str) -> Tensor:
    """Sum, mean or max of ``values`` ``(B, T)`` over each row's ``mask != 0`` -> ``(B,)``;
    0 for an empty row. Positions outside ``mask`` are selected away, whatever they hold."""
    if reduce not in SEQ_REDUCTIONS:
        raise ValueError(f"reduce must be one of {list(SEQ_REDUCTIONS)}, got {reduce!r}")
    on = mask != 0
    if reduce == "max":
        peak = torch.where(on, values, torch.full_like(values, float("-inf"))).amax(-1)
        return torch.where(on.any(-1), peak, torch.zeros_like(peak))
    total = torch.where(on, values, torch.zeros_like(values)).sum(-1)
    if reduce == "sum":
        return total
    return total / on.sum(-1).clamp(min=1).to(values.dtype)


def kl_k1(logp_sampler: Tensor, logp_other: Tensor) -> Tensor:
    """k1 estimate of ``KL(sampler || other)`` per token: ``log q(x) - log p(x)``."""
    return logp_sampler - logp_other


def kl_k2(logp_sampler: Tensor, logp_other: Tensor) -> Tensor:
    """k2 estimate of ``KL(sampler || other)`` per token: ``(log p(x) - log q(x))**2 / 2``."""
    return 0.5 * (logp_other - logp_sampler) ** 2


def kl_k3(logp_sampler: Tensor, logp_other: Tensor) -> Tensor:
    """k3 estimate of ``KL(sampler || other)`` per token: ``r - 1 - log r``, ``r = p/q``."""
    log_r = (logp_other - logp_sampler).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.expm1(log_r) - log_r


def kl_abs(logp_sampler: Tensor, logp_other: Tensor) -> Tensor:
    """``|log q(x) - log p(x)|`` per token (verl's ``abs``): a biased, non-negative k1."""
    return (logp_sampler - logp_other).abs()


def _with_k2_gradient(value: Tensor, logp_sampler: Tensor, logp_other: Tensor) -> Tensor:
    """``value`` in the forward pass, the gradient of :func:`kl_k2` in the backward pass."""
    k2 = kl_k2(logp_sampler, logp_other)
    return k2 - k2.detach() + value.detach()


def kl_k1_plus(logp_sampler: Tensor, logp_other: Tensor) -> Tensor:
    """verl's ``k1+`` per token: the value of :func:`kl_k1`, the gradient of :func:`kl_k2`."""
    return _with_k2_gradient(kl_k1(logp_sampler, logp_other), logp_sampler, logp_other)


def kl_k3_plus(logp_sampler: Tensor, logp_other: Tensor) -> Tensor:
    """verl's ``k3+`` per token: the value of :func:`kl_k3`, the gradient of :func:`kl_k2`."""
    return _with_k2_gradient(kl_k3(logp_sampler, logp_other), logp_sampler, logp_other)


def log_perplexity(logp: Tensor, mask: Tensor) -> Tensor:
    """Each sequence's log-perplexity ``-mean_t log p(a_t)`` over ``mask`` ``(B, T) -> (B,)``;
    0 for an empty row. ``exp`` of it is the perplexity (verl's ``training_ppl`` per row)."""
    return -seq_reduce(logp, mask, "mean")


def kl_k3_reverse(logp_sampler: Tensor, logp_other: Tensor) -> Tensor:
    """k3-style estimate of ``KL(other || sampler)`` per token from tokens of the sampler.

    ``r log r - (r - 1)`` with ``r = p/q``: unbiased (``E_q[r log r] = KL(p || q)``,
    ``E_q[r] = 1``) and ``>= 0``. The direction of the KL floor (spec, fact 6).
    """
    log_r = (logp_other - logp_sampler).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    term = log_r.exp() * log_r - torch.expm1(log_r)
    # p = 0: the limit r -> 0 is exactly 1 (the clamp at -20 would leave 1 - 21 e^-20)
    return torch.where(logp_other == float("-inf"), torch.ones_like(term), term)


def kl_floor(kl_target_inf: Tensor, log_z: Tensor, mask: Tensor) -> Tensor:
    """Least mean ``KL(p_target || p_after)`` any rule with acceptances ``Z_t`` can leave -> scalar.

    Spec, fact 6: per position ``KL_t(p_target || p_after) >= KL_t(p_target || p_inf) -
    log(1/Z_t)``; averaged over ``mask`` and floored at 0. ``kl_target_inf``: per-token
    estimates of ``KL(p_target || p_inf)`` (e.g. :func:`kl_k3_reverse`); all ``(B, T)``.
    """
    return (masked_mean(kl_target_inf, mask) + masked_mean(log_z, mask)).clamp(min=0.0)


def effective_sample_size(weights: Tensor, mask: Tensor) -> Tensor:
    """Normalised ESS ``(sum w)^2 / (n sum w^2)`` in ``[0, 1]`` over ``mask`` -> scalar.

    1 for equal weights, ``1/n`` when one weight dominates; 0 when every weight is 0.
    Scale-free, so the weights are divided by their largest ``|w|`` first: ``w^2`` of weights
    near the float limits would otherwise overflow (``inf / inf``) or underflow to 0.
    """
    on = mask != 0
    w = torch.where(on, weights, torch.zeros_like(weights))
    n = on.sum().clamp(min=1).to(weights.dtype)
    scale = w.abs().amax() if w.numel() else w.new_zeros(())
    u = w / torch.where(scale > 0, scale, torch.ones_like(scale))
    # max |u| is exactly 1 unless every weight is 0 (then u = 0 and the result is 0 / n)
    return u.sum() ** 2 / (n * (u * u).sum().clamp(min=1.0))
