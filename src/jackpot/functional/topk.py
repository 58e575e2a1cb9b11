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

from jackpot.functional.obrs import NEG_INF, _log_lam, solve_lambda

__all__ = [
    "batch_lambda",
    "kappa",
    "sparse_topk_normalizer",
    "topk_normalizer",
]


def sparse_topk_normalizer(
    ids: Tensor, logp_target: Tensor, logp_inf: Tensor, lam: float | Tensor
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
    log_lam = _log_lam(lam, logp_target)
    if log_lam.dim() > 0:
        log_lam = log_lam.unsqueeze(-1)
    term = torch.minimum(logp_inf, logp_target - log_lam).exp()  # (..., m)
    # Largest term first, then a stable sort by id: each id's first entry is its largest.
    term, by_term = term.sort(dim=-1, descending=True, stable=True)
    ids_by_term = ids.gather(-1, by_term)
    ids_sorted, by_id = ids_by_term.sort(dim=-1, stable=True)
    term = term.gather(-1, by_id)
    first = torch.ones_like(ids_sorted, dtype=torch.bool)
    first[..., 1:] = ids_sorted[..., 1:] != ids_sorted[..., :-1]
    return (term * first).sum(-1)


def topk_normalizer(logp_target: Tensor, logp_inf: Tensor, lam: float | Tensor, k: int) -> Tensor:
    """``Z_approx`` over ``topk(p_inf) ∪ topk(p_target)`` from full ``(..., V)`` log-probs.

    Ties at the k-th value are broken by ``torch.topk``, so ``Z_approx`` can depend on the
    tie-breaking (spec, fact 5); it is always ``<= Z`` and equals ``Z`` once ``k = V``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, logp_target.shape[-1])
    ids = torch.cat(
        [logp_inf.topk(k, dim=-1).indices, logp_target.topk(k, dim=-1).indices], dim=-1
    )  # (..., 2k)
    return sparse_topk_normalizer(ids, logp_target.gather(-1, ids), logp_inf.gather(-1, ids), lam)


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


def batch_lambda(log_ratio: Tensor, mask: Tensor, budget: float) -> Tensor:
    """One ``lam`` for the batch with ``mean_t min(1, r_t/lam) = budget`` -> scalar.

    ``log_ratio``: ``(B, T)`` ``log p_target(a_t) - log p_inf(a_t)`` of the sampled tokens;
    ``mask``: valid positions. The mean acceptance probability is an unbiased estimate of
    the mean ``Z`` (``E[a(a_t)] = Z_t``), and it is the ``Z`` of the empirical distribution
    that puts ``1/N`` on each token, so :func:`solve_lambda` inverts it exactly.
    Raises ``InfeasibleBudgetError`` above the fraction of tokens with ``p_target > 0``.
    """
    valid = mask.bool()
    n = int(valid.sum())
    if n == 0:
        raise ValueError("batch_lambda needs at least one valid token (mask is all zero)")
    log_r = log_ratio[valid].double().clamp(max=700.0)  # (N,)
    log_n = math.log(n)
    logp_inf = torch.full_like(log_r, -log_n)
    logp_target = torch.where(log_r.isnan(), torch.full_like(log_r, NEG_INF), log_r - log_n)
    return solve_lambda(logp_target, logp_inf, budget).to(log_ratio.dtype)
