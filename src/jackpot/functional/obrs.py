"""Exact Optimal Budgeted Rejection Sampling (OBRS) over full distributions.

All functions take log-probabilities (natural log, ``-inf`` for zero mass) with the
vocabulary on the last dim and any leading batch dims, and work in log space so that
ratios ``p_target / p_inf`` never overflow. Spec: ``shared/docs/jackpot-math.md`` (OBRS),
after Verine et al., AISTATS 2024, and Chen et al., ICLR 2026 (eq. 3-4).

Conventions at the edges of the support:

- ``p_target(x) = 0``: the token is rejected for every ``lam`` (acceptance 0, weight 0).
- ``p_inf(x) = 0 < p_target(x)``: the token is never proposed; its acceptance is 1 by
  continuity and its weight ``p_target / p_obrs`` is ``+inf`` (``p_obrs(x) = 0``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "InfeasibleBudgetError",
    "acceptance_prob",
    "draw_accept",
    "log_acceptance_prob",
    "log_normalizer",
    "max_feasible_budget",
    "normalizer",
    "obrs_weight",
    "post_rejection",
    "proposal_weight",
    "solve_lambda",
]

NEG_INF = float("-inf")


class InfeasibleBudgetError(ValueError):
    """A requested acceptance budget exceeds the largest one any ``lam`` reaches."""

    def __init__(self, budget: float, max_budget: float) -> None:
        self.budget = budget
        self.max_budget = max_budget
        super().__init__(
            f"budget={budget:.6g} is infeasible: the largest reachable acceptance rate is "
            f"{max_budget:.6g} (the p_inf-mass on the support of p_target); choose budget in "
            f"(0, {max_budget:.6g}]"
        )


def _log_lam(lam: float | Tensor, like: Tensor) -> Tensor:
    """``log(lam)`` as a tensor broadcastable against ``like``'s leading dims + a vocab dim."""
    lam_t = torch.as_tensor(lam, dtype=like.dtype, device=like.device)
    if bool((lam_t <= 0).any()) or bool(torch.isnan(lam_t).any()):
        raise ValueError(f"lam must be > 0 (and not NaN), got {lam}")
    return lam_t.log()


def _expand_lam(log_lam: Tensor) -> Tensor:
    """Append a vocab dim to a per-position ``log lam`` (scalars stay scalars)."""
    return log_lam if log_lam.dim() == 0 else log_lam.unsqueeze(-1)


def _elementwise_log_lam(lam: float | Tensor, like: Tensor) -> Tensor:
    """``log lam`` aligned with ``like``: a per-row ``(...)`` lam gains a vocab dim when needed."""
    log_lam = _log_lam(lam, like)
    if like.dim() > 0 and log_lam.dim() > 0 and log_lam.shape != like.shape:
        log_lam = _expand_lam(log_lam)
    return log_lam


def log_acceptance_prob(logp_target: Tensor, logp_inf: Tensor, lam: float | Tensor) -> Tensor:
    """``log a(x) = min(0, log p_target - log lam - log p_inf)``, elementwise.

    Works on full distributions ``(..., V)`` (``lam`` scalar or ``(...)``) and equally on
    sampled-token log-probs ``(B, T)`` with a scalar ``lam``.
    """
    log_lam = _elementwise_log_lam(lam, logp_target)
    diff = logp_target - log_lam - logp_inf  # nan where both are -inf
    out = diff.clamp(max=0.0)  # p_inf = 0 < p_target gives +inf -> 0 (accept)
    return torch.where(logp_target == NEG_INF, torch.full_like(out, NEG_INF), out)


def acceptance_prob(logp_target: Tensor, logp_inf: Tensor, lam: float | Tensor) -> Tensor:
    """``a(x) = min(1, p_target(x) / (lam p_inf(x)))`` -> same shape as the inputs."""
    return log_acceptance_prob(logp_target, logp_inf, lam).exp()


def _log_min_mass(logp_target: Tensor, logp_inf: Tensor, log_lam: Tensor) -> Tensor:
    """``log min(p_inf, p_target / lam)`` per entry ``(..., V)``."""
    return torch.minimum(logp_inf, logp_target - _expand_lam(log_lam))


def log_normalizer(logp_target: Tensor, logp_inf: Tensor, lam: float | Tensor) -> Tensor:
    """``log Z(lam)`` with ``Z = sum_x min(p_inf(x), p_target(x)/lam)`` -> ``(...)``."""
    log_lam = _log_lam(lam, logp_target)
    return torch.logsumexp(_log_min_mass(logp_target, logp_inf, log_lam), dim=-1)


def normalizer(logp_target: Tensor, logp_inf: Tensor, lam: float | Tensor) -> Tensor:
    """Exact ``Z(lam) = E_{x~p_inf}[a(x)]``, the expected acceptance rate -> ``(...)``."""
    return log_normalizer(logp_target, logp_inf, lam).exp()


def post_rejection(logp_target: Tensor, logp_inf: Tensor, lam: float | Tensor) -> Tensor:
    """Probabilities of ``p_obrs(x) = min(p_inf(x), p_target(x)/lam) / Z`` -> ``(..., V)``.

    Raises ``ValueError`` where ``Z = 0`` (disjoint supports): p_obrs is undefined there.
    """
    log_lam = _log_lam(lam, logp_target)
    log_mass = _log_min_mass(logp_target, logp_inf, log_lam)
    log_z = torch.logsumexp(log_mass, dim=-1, keepdim=True)
    if bool((log_z == NEG_INF).any()):
        raise ValueError(
            "post_rejection: Z(lam) = 0 for some rows (p_inf and p_target have disjoint "
            "supports), so the post-rejection distribution is undefined"
        )
    return (log_mass - log_z).exp()


def proposal_weight(logp_target: Tensor, logp_inf: Tensor, lam: float | Tensor) -> Tensor:
    """``max(lam, p_target/p_inf)``: the weight of an accepted token relative to p_inf.

    ``E_{x~p_inf}[m(x) max(lam, r(x)) f(x)] = E_{p_target}[f]`` (spec, fact 1), so summed over
    accepted tokens and divided by the number of *proposed* positions it is unbiased without
    any ``Z``. Elementwise: ``(..., V)`` with ``lam`` scalar or ``(...)``, or sampled tokens.
    0 where ``p_target = 0``.
    """
    log_lam = _elementwise_log_lam(lam, logp_target)
    log_w = torch.maximum(log_lam.expand_as(logp_target), logp_target - logp_inf)
    return torch.where(logp_target == NEG_INF, torch.zeros_like(log_w), log_w.exp())


def obrs_weight(logp_target: Tensor, logp_inf: Tensor, lam: float | Tensor) -> Tensor:
    """``w(x) = Z * max(lam, p_target/p_inf) = p_target / p_obrs`` -> ``(..., V)``.

    The weight relative to the renormalised ``p_obrs``, for a mean over *accepted* tokens.
    0 where ``p_target = 0``; ``+inf`` where ``p_inf = 0 < p_target`` (never proposed).
    """
    z = normalizer(logp_target, logp_inf, lam).unsqueeze(-1)
    return z * proposal_weight(logp_target, logp_inf, lam)


def max_feasible_budget(logp_target: Tensor, logp_inf: Tensor) -> Tensor:
    """Largest reachable ``Z``: the p_inf-mass on the support of p_target -> ``(...)``."""
    log_mass = torch.where(logp_target == NEG_INF, torch.full_like(logp_inf, NEG_INF), logp_inf)
    return torch.logsumexp(log_mass, dim=-1).exp()


def solve_lambda(
    logp_target: Tensor,
    logp_inf: Tensor,
    budget: float | Tensor,
    *,
    chunk_size: int = 1024,
) -> Tensor:
    """Exact ``lam`` with ``Z(lam) = budget`` per row, by sorting the ratios -> ``(...)``.

    With ratios sorted descending ``r_(1) >= r_(2) >= ...`` over the joint support,
    ``Z(lam) = P_j + Q_j / lam`` on ``[r_(j+1), r_(j)]`` where ``P_j`` is the p_inf-mass of the
    ``j`` largest ratios and ``Q_j`` the p_target-mass of the rest (spec, fact 4); ``Z`` rises
    as ``lam`` falls, so the segment holding ``budget`` is found by counting breakpoints below
    it, and ``lam = Q_j / (budget - P_j)`` closes the form. Where ``budget`` equals the largest
    feasible budget every ``lam <= min ratio`` reaches it and the largest such ``lam`` is
    returned. Computed in float64 in row chunks (peak memory ``O(chunk_size * V)``).

    Raises ``InfeasibleBudgetError`` when ``budget`` exceeds :func:`max_feasible_budget` of
    some row, and ``ValueError`` for a budget outside ``(0, 1]``.
    """
    if logp_target.shape != logp_inf.shape:
        raise ValueError(
            f"logp_target and logp_inf must have the same shape, got "
            f"{tuple(logp_target.shape)} and {tuple(logp_inf.shape)}"
        )
    batch_shape = logp_target.shape[:-1]
    budget_t = torch.as_tensor(budget, dtype=torch.float64, device=logp_target.device)
    if bool(((budget_t <= 0) | (budget_t > 1) | budget_t.isnan()).any()):
        raise ValueError(f"budget must be in (0, 1], got {budget}")
    budget_rows = budget_t.expand(batch_shape).reshape(-1)
    v = logp_target.shape[-1]
    lt_rows = logp_target.reshape(-1, v)
    li_rows = logp_inf.reshape(-1, v)
    out = torch.empty(lt_rows.shape[0], dtype=torch.float64, device=logp_target.device)
    for start in range(0, lt_rows.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        out[sl] = _solve_lambda_rows(lt_rows[sl], li_rows[sl], budget_rows[sl])
    return out.reshape(batch_shape).to(logp_target.dtype)


def _solve_lambda_rows(logp_target: Tensor, logp_inf: Tensor, budget: Tensor) -> Tensor:
    """:func:`solve_lambda` on ``(R, V)`` rows with a ``(R,)`` budget, in float64."""
    lt = logp_target.double()
    li = logp_inf.double()
    support = (lt > NEG_INF) & (li > NEG_INF)
    log_r = torch.where(support, lt - li, torch.full_like(lt, NEG_INF))
    log_r_sorted, order = torch.sort(log_r, dim=-1, descending=True)  # (R, V)
    p_inf = torch.where(support, li.exp(), torch.zeros_like(li)).gather(-1, order)
    p_tgt = torch.where(support, lt.exp(), torch.zeros_like(lt)).gather(-1, order)
    # P_j: p_inf-mass of the j largest ratios; Q_j: p_target-mass of the others (j = 0..V).
    zero = torch.zeros_like(p_inf[:, :1])
    p_cum = torch.cat([zero, p_inf.cumsum(-1)], dim=-1)  # (R, V+1)
    q_rest = torch.cat([p_tgt.flip(-1).cumsum(-1).flip(-1), zero], dim=-1)  # (R, V+1)
    # Z at the breakpoint lam = r_(j): P_j + Q_j / r_(j), for j = 1..V; +inf off the support.
    valid = log_r_sorted > NEG_INF
    z_break = p_cum[:, 1:] + q_rest[:, 1:] * torch.exp(-log_r_sorted.clamp(min=-700.0))
    z_break = torch.where(valid, z_break, torch.full_like(z_break, math.inf))
    max_budget = p_cum[:, -1]  # p_inf-mass on the joint support
    tol = 64 * torch.finfo(logp_target.dtype).eps
    infeasible = budget > max_budget * (1 + tol) + tol
    if bool(infeasible.any()):
        idx = int(infeasible.nonzero()[0, 0])
        raise InfeasibleBudgetError(float(budget[idx]), float(max_budget[idx]))
    # Number of breakpoints whose Z is below the budget = the segment index j.
    j = (z_break < budget.unsqueeze(-1)).sum(-1, keepdim=True)  # (R, 1)
    n_valid = valid.sum(-1, keepdim=True)
    at_max = j >= n_valid  # budget == max feasible (within tol): lam = smallest ratio
    p_j = p_cum.gather(-1, j)
    q_j = q_rest.gather(-1, j)
    lam = q_j / (budget.unsqueeze(-1) - p_j)
    smallest = log_r_sorted.gather(-1, (n_valid - 1).clamp(min=0)).exp()
    lam = torch.where(at_max, smallest, lam)
    return lam.squeeze(-1)


def draw_accept(accept_prob: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """0/1 accept outcomes ``m ~ Bernoulli(accept_prob)``; randomness only from ``generator``."""
    u = torch.rand(
        accept_prob.shape, generator=generator, dtype=accept_prob.dtype, device=accept_prob.device
    )
    return (u < accept_prob).to(accept_prob.dtype)
