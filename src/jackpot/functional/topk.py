"""Cheap OBRS normaliser for large vocabularies: top-k ``Z_approx``, batch ``kappa``, batch ``lam``.

Storing ``B x T x V`` probabilities is the memory wall (spec, "Cheap Z for large
vocabularies"). The rollout engine keeps only the top-k log-probs of ``p_inf``; the trainer
adds the top-k of ``p_new``. ``Z_approx`` sums ``min(p_inf, p_target/lam)`` over that union,
so ``Z_approx <= Z``; the batch factor ``kappa`` rescales it so its mean matches the observed
acceptance.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from jackpot.functional.obrs import NEG_INF, Lam, _expand_lam, _log_lam, solve_log_lambda

__all__ = [
    "batch_lambda",
    "batch_log_lambda",
    "kappa",
    "sparse_topk_normalizer",
    "topk_normalizer",
]


def sparse_topk_normalizer(
    ids: Tensor,
    logp_target: Tensor,
    logp_inf: Tensor,
    lam: Lam | None = None,
    *,
    log_lam: Lam | None = None,
) -> Tensor:
    """``Z_approx = sum_{x in set(ids)} min(p_inf(x), p_target(x)/lam)`` -> ``(...)``.

    ``ids``, ``logp_target``, ``logp_inf``: ``(..., m)`` candidate tokens (e.g. the stored
    top-k of p_inf concatenated with the top-k of p_new) and both log-probs at them.
    Assumption for what cannot be seen: an entry whose ``p_inf`` is unknown (a p_new top-k
    token outside the stored p_inf top-k) is passed as ``-inf`` and contributes 0; tokens
    outside ``ids`` contribute 0. Every term is ``>= 0``, so the result is a lower bound of
    the exact ``Z``, tight as ``k`` grows; :func:`kappa` corrects the remaining bias per
    batch. A token listed twice counts once, with its largest (best-informed) term.
    """
    if not (ids.shape == logp_target.shape == logp_inf.shape):
        raise ValueError(
            f"ids, logp_target and logp_inf must share a shape, got {tuple(ids.shape)}, "
            f"{tuple(logp_target.shape)}, {tuple(logp_inf.shape)}"
        )
    log_l = _expand_lam(_log_lam(lam, logp_target, log_lam))
    term = torch.minimum(logp_inf, logp_target - log_l).exp()  # (..., m)
    # Largest term first, then a stable sort by id: each id's first entry is its largest.
    term, by_term = term.sort(dim=-1, descending=True, stable=True)
    ids_by_term = ids.gather(-1, by_term)
    ids_sorted, by_id = ids_by_term.sort(dim=-1, stable=True)
    term = term.gather(-1, by_id)
    first = torch.ones_like(ids_sorted, dtype=torch.bool)
    first[..., 1:] = ids_sorted[..., 1:] != ids_sorted[..., :-1]
    return (term * first).sum(-1)


def topk_normalizer(
    logp_target: Tensor,
    logp_inf: Tensor,
    lam: Lam | None,
    k: int,
    *,
    log_lam: Lam | None = None,
) -> Tensor:
    """``Z_approx`` over ``topk(p_inf) ∪ topk(p_target)`` from full ``(..., V)`` log-probs.

    ``lam`` may be None when ``log_lam`` is given instead.

    Ties at the k-th value are broken by ``torch.topk``, so ``Z_approx`` can depend on the
    tie-breaking (spec, fact 5); it is always ``<= Z`` and equals ``Z`` once ``k = V``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, logp_target.shape[-1])
    ids = torch.cat(
        [logp_inf.topk(k, dim=-1).indices, logp_target.topk(k, dim=-1).indices], dim=-1
    )  # (..., 2k)
    return sparse_topk_normalizer(
        ids, logp_target.gather(-1, ids), logp_inf.gather(-1, ids), lam, log_lam=log_lam
    )


def kappa(acceptance: Tensor, z_approx: Tensor, mask: Tensor) -> Tensor:
    """Batch bias correction ``kappa = mean_t(acceptance_t) / mean_t(Z_approx_t)`` -> scalar.

    Two estimators, by what ``acceptance`` holds (all ``(B, T)``, ``mask`` 0/1):
    the 0/1 accept outcomes (the paper's ``acc_rate``), or the acceptance *probabilities*
    ``a(a_t)`` of the sampled tokens. ``E[a(a_t)] = Z_t`` exactly, so the second is unbiased
    for the mean ``Z`` with lower variance. ``1`` when the batch has no valid position.
    """
    mask = mask.to(z_approx.dtype)
    num = (acceptance.to(z_approx.dtype) * mask).sum()
    den = (z_approx * mask).sum()
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny), 1.0)


def batch_log_lambda(log_ratio: Tensor, mask: Tensor, budget: float) -> Tensor:
    """One ``log lam`` for the batch with ``mean_t min(1, r_t/lam) = budget`` -> 0-d float64.

    ``log_ratio``: ``(B, T)`` ``log p_target(a_t) - log p_inf(a_t)`` of the sampled tokens;
    ``mask``: valid positions. The mean acceptance probability is an unbiased estimate of
    the mean ``Z`` (``E[a(a_t)] = Z_t``), and it is the ``Z`` of the empirical distribution
    that puts ``1/N`` on each token, so :func:`solve_log_lambda` inverts it exactly (in log
    space: a batch holding a token with ``log r = -1e4`` may need ``lam ~ e^-1e4``).
    Raises ``InfeasibleBudgetError`` above the fraction of tokens with ``p_target > 0``, and
    ``ValueError`` when ``mask`` has no valid token (no budget to meet).
    """
    valid = mask.bool()
    n = int(valid.sum())
    if n == 0:
        raise ValueError("batch_lambda needs at least one valid token (mask is all zero)")
    log_r = log_ratio[valid].double().clamp(max=700.0)  # (N,)
    log_n = math.log(n)
    logp_inf = torch.full_like(log_r, -log_n)
    logp_target = torch.where(log_r.isnan(), torch.full_like(log_r, NEG_INF), log_r - log_n)
    return solve_log_lambda(logp_target, logp_inf, budget)


def batch_lambda(log_ratio: Tensor, mask: Tensor, budget: float) -> Tensor:
    """:func:`batch_log_lambda` as ``lam`` in ``log_ratio``'s dtype -> scalar.

    Raises ``ValueError`` where that ``lam`` is outside the dtype's range (then use
    :func:`batch_log_lambda` and ``log_lam=``).
    """
    log_l = batch_log_lambda(log_ratio, mask, budget)
    lam = log_l.exp().to(log_ratio.dtype)
    if not (bool(lam > 0) and bool(torch.isfinite(lam))):
        raise ValueError(
            f"budget={budget} needs lam = exp({float(log_l):.6g}), outside the "
            f"{log_ratio.dtype} range; use batch_log_lambda and log_lam="
        )
    return lam
