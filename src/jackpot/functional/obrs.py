"""Exact Optimal Budgeted Rejection Sampling (OBRS) over full distributions.

All functions take log-probabilities (natural log, ``-inf`` for zero mass) with the
vocabulary on the last dim and any leading batch dims, and work in log space so that
ratios ``p_target / p_inf`` never overflow. Math: ``docs/math.md`` (sections 2-3), after
Verine et al., AISTATS 2024, and Chen et al., ICLR 2026 (eq. 3-4).

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
    "log_post_rejection_at",
    "log_proposal_weight",
    "max_feasible_budget",
    "normalizer",
    "obrs_weight",
    "post_rejection",
    "proposal_weight",
    "solve_lambda",
    "solve_log_lambda",
]

Lam = float | Tensor
"""A threshold ``lam > 0``: a float, a 0-d tensor, or one value per position ``(...)``."""

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


def _log_lam(lam: Lam | None, like: Tensor, log_lam: Lam | None = None) -> Tensor:
    """``log lam`` as a tensor in ``like``'s dtype, from exactly one of ``lam`` or ``log_lam``.

    ``log_lam`` carries thresholds below the float range: a budget met on tokens with
    ``log r = -1e4`` needs ``lam ~ e^-1e4``, which no float holds (see :func:`solve_log_lambda`).
    """
    if (lam is None) == (log_lam is None):
        raise ValueError("pass exactly one of lam and log_lam")
    if log_lam is not None:
        out = torch.as_tensor(log_lam, dtype=like.dtype, device=like.device)
        if not bool(torch.isfinite(out).all()):
            raise ValueError(f"log_lam must be finite (lam in (0, inf)), got {log_lam}")
        return out
    lam_t = torch.as_tensor(lam, dtype=like.dtype, device=like.device)
    if bool((lam_t <= 0).any()) or bool(torch.isnan(lam_t).any()):
        raise ValueError(f"lam must be > 0 (and not NaN), got {lam}")
    return lam_t.log()


def _expand_lam(log_lam: Tensor) -> Tensor:
    """Append a vocab dim to a per-position ``log lam`` (scalars stay scalars)."""
    return log_lam if log_lam.dim() == 0 else log_lam.unsqueeze(-1)


def _elementwise_log_lam(lam: Lam | None, like: Tensor, log_lam: Lam | None = None) -> Tensor:
    """``log lam`` aligned with ``like``: a per-row ``(...)`` lam gains a vocab dim when needed."""
    out = _log_lam(lam, like, log_lam)
    if like.dim() > 0 and out.dim() > 0 and out.shape != like.shape:
        out = _expand_lam(out)
    return out


def log_acceptance_prob(
    logp_target: Tensor, logp_inf: Tensor, lam: Lam | None = None, *, log_lam: Lam | None = None
) -> Tensor:
    """``log a(x) = min(0, log p_target - log lam - log p_inf)``, elementwise.

    Works on full distributions ``(..., V)`` (``lam`` scalar or ``(...)``) and equally on
    sampled-token log-probs ``(B, T)`` with a scalar ``lam``.
    """
    log_l = _elementwise_log_lam(lam, logp_target, log_lam)
    diff = logp_target - log_l - logp_inf  # nan where both are -inf
    out = diff.clamp(max=0.0)  # p_inf = 0 < p_target gives +inf -> 0 (accept)
    return torch.where(logp_target == NEG_INF, torch.full_like(out, NEG_INF), out)


def acceptance_prob(
    logp_target: Tensor, logp_inf: Tensor, lam: Lam | None = None, *, log_lam: Lam | None = None
) -> Tensor:
    """``a(x) = min(1, p_target(x) / (lam p_inf(x)))`` -> same shape as the inputs."""
    return log_acceptance_prob(logp_target, logp_inf, lam, log_lam=log_lam).exp()


def _log_min_mass(logp_target: Tensor, logp_inf: Tensor, log_l: Tensor) -> Tensor:
    """``log min(p_inf, p_target / lam)`` per entry ``(..., V)``."""
    return torch.minimum(logp_inf, logp_target - _expand_lam(log_l))


def log_normalizer(
    logp_target: Tensor, logp_inf: Tensor, lam: Lam | None = None, *, log_lam: Lam | None = None
) -> Tensor:
    """``log Z(lam)`` with ``Z = sum_x min(p_inf(x), p_target(x)/lam)`` -> ``(...)``."""
    log_l = _log_lam(lam, logp_target, log_lam)
    return torch.logsumexp(_log_min_mass(logp_target, logp_inf, log_l), dim=-1)


def normalizer(
    logp_target: Tensor, logp_inf: Tensor, lam: Lam | None = None, *, log_lam: Lam | None = None
) -> Tensor:
    """Exact ``Z(lam) = E_{x~p_inf}[a(x)]``, the expected acceptance rate -> ``(...)``."""
    return log_normalizer(logp_target, logp_inf, lam, log_lam=log_lam).exp()


def post_rejection(
    logp_target: Tensor, logp_inf: Tensor, lam: Lam | None = None, *, log_lam: Lam | None = None
) -> Tensor:
    """Probabilities of ``p_obrs(x) = min(p_inf(x), p_target(x)/lam) / Z`` -> ``(..., V)``.

    Raises ``ValueError`` where ``Z = 0`` (disjoint supports): p_obrs is undefined there.
    """
    log_l = _log_lam(lam, logp_target, log_lam)
    log_mass = _log_min_mass(logp_target, logp_inf, log_l)
    log_z = torch.logsumexp(log_mass, dim=-1, keepdim=True)
    if bool((log_z == NEG_INF).any()):
        raise ValueError(
            "post_rejection: Z(lam) = 0 for some rows (p_inf and p_target have disjoint "
            "supports), so the post-rejection distribution is undefined"
        )
    return (log_mass - log_z).exp()


def log_post_rejection_at(
    logp_target: Tensor,
    logp_inf: Tensor,
    log_z: Tensor,
    lam: Lam | None = None,
    *,
    log_lam: Lam | None = None,
) -> Tensor:
    """``log p_obrs`` at given tokens: ``log min(p_inf, p_target/lam) - log Z``, elementwise.

    For sampled-token log-probs ``(B, T)`` with their ``log Z_t`` ``(B, T)`` (exact or top-k),
    without the full distribution that :func:`post_rejection` needs.
    """
    log_l = _log_lam(lam, logp_target, log_lam)
    return torch.minimum(logp_inf, logp_target - log_l) - log_z


def log_proposal_weight(
    logp_target: Tensor, logp_inf: Tensor, lam: Lam | None = None, *, log_lam: Lam | None = None
) -> Tensor:
    """``log max(lam, p_target/p_inf)``, elementwise; ``-inf`` where ``p_target = 0``."""
    log_l = _elementwise_log_lam(lam, logp_target, log_lam)
    log_w = torch.maximum(log_l.expand_as(logp_target), logp_target - logp_inf)
    return torch.where(logp_target == NEG_INF, torch.full_like(log_w, NEG_INF), log_w)


def proposal_weight(
    logp_target: Tensor, logp_inf: Tensor, lam: Lam | None = None, *, log_lam: Lam | None = None
) -> Tensor:
    """``max(lam, p_target/p_inf)``: the weight of an accepted token relative to p_inf.

    ``E_{x~p_inf}[m(x) max(lam, r(x)) f(x)] = E_{p_target}[f]`` (spec, fact 1), so summed over
    accepted tokens and divided by the number of *proposed* positions it is unbiased without
    any ``Z``. Elementwise: ``(..., V)`` with ``lam`` scalar or ``(...)``, or sampled tokens.
    0 where ``p_target = 0``.
    """
    return log_proposal_weight(logp_target, logp_inf, lam, log_lam=log_lam).exp()


def obrs_weight(
    logp_target: Tensor, logp_inf: Tensor, lam: Lam | None = None, *, log_lam: Lam | None = None
) -> Tensor:
    """``w(x) = Z * max(lam, p_target/p_inf) = p_target / p_obrs`` -> ``(..., V)``.

    The weight relative to the renormalised ``p_obrs``, for a mean over *accepted* tokens.
    0 where ``p_target = 0``; ``+inf`` where ``p_inf = 0 < p_target`` (never proposed).
    Formed in log space: ``Z`` may underflow exactly where ``max(lam, r)`` overflows.
    """
    log_z = log_normalizer(logp_target, logp_inf, lam, log_lam=log_lam).unsqueeze(-1)
    return (log_z + log_proposal_weight(logp_target, logp_inf, lam, log_lam=log_lam)).exp()


def max_feasible_budget(logp_target: Tensor, logp_inf: Tensor) -> Tensor:
    """Largest reachable ``Z``: the p_inf-mass on the support of p_target -> ``(...)``."""
    log_mass = torch.where(logp_target == NEG_INF, torch.full_like(logp_inf, NEG_INF), logp_inf)
    return torch.logsumexp(log_mass, dim=-1).exp()


def _budget_tol(dtype: torch.dtype) -> float:
    """Slack for budgets at the feasibility edge: ``max_feasible_budget`` is itself rounded."""
    return 64 * torch.finfo(dtype).eps


def solve_log_lambda(
    logp_target: Tensor,
    logp_inf: Tensor,
    budget: float | Tensor,
    *,
    chunk_size: int = 1024,
) -> Tensor:
    """Exact ``log lam`` with ``Z(lam) = budget`` per row, by sorting the ratios -> ``(...)`` f64.

    With ratios sorted descending ``r_(1) >= r_(2) >= ...`` over the joint support,
    ``Z(lam) = P_j + Q_j / lam`` on ``[r_(j+1), r_(j)]`` where ``P_j`` is the p_inf-mass of the
    ``j`` largest ratios and ``Q_j`` the p_target-mass of the rest (spec, fact 4); ``Z`` rises
    as ``lam`` falls, so the segment holding ``budget`` is found by counting breakpoints below
    it, and ``log lam = log Q_j - log(budget - P_j)`` closes the form (``Q_j`` in log space:
    it may be far below the float range). Where ``budget`` equals the largest feasible budget
    every ``lam <= min ratio`` reaches it and the largest such ``lam`` is returned. Always
    float64, in row chunks (peak memory ``O(chunk_size * V)``).

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
    tol = _budget_tol(logp_target.dtype)
    if bool(((budget_t <= 0) | (budget_t > 1 + tol) | budget_t.isnan()).any()):
        raise ValueError(f"budget must be in (0, 1], got {budget}")
    budget_rows = budget_t.expand(batch_shape).reshape(-1)
    v = logp_target.shape[-1]
    lt_rows = logp_target.reshape(-1, v)
    li_rows = logp_inf.reshape(-1, v)
    out = torch.empty(lt_rows.shape[0], dtype=torch.float64, device=logp_target.device)
    for start in range(0, lt_rows.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        out[sl] = _solve_log_lambda_rows(lt_rows[sl], li_rows[sl], budget_rows[sl], tol)
    return out.reshape(batch_shape)


def solve_lambda(
    logp_target: Tensor,
    logp_inf: Tensor,
    budget: float | Tensor,
    *,
    chunk_size: int = 1024,
) -> Tensor:
    """Exact ``lam`` with ``Z(lam) = budget`` per row -> ``(...)`` in the input dtype.

    :func:`solve_log_lambda`, exponentiated. Raises ``InfeasibleBudgetError`` above the largest
    feasible budget, and ``ValueError`` where the exact ``lam`` lies outside the range of the
    input dtype (use :func:`solve_log_lambda` and the ``log_lam=`` arguments there).
    """
    log_l = solve_log_lambda(logp_target, logp_inf, budget, chunk_size=chunk_size)
    lam = log_l.exp().to(logp_target.dtype)
    bad = (lam == 0) | ~torch.isfinite(lam)
    if bool(bad.any()):
        worst = float(log_l[bad].flatten()[0])
        raise ValueError(
            f"budget={budget} needs lam = exp({worst:.6g}), outside the {logp_target.dtype} "
            "range; use solve_log_lambda and pass log_lam= instead of lam="
        )
    return lam


def _solve_log_lambda_rows(
    logp_target: Tensor, logp_inf: Tensor, budget: Tensor, tol: float
) -> Tensor:
    """:func:`solve_log_lambda` on ``(R, V)`` rows with a ``(R,)`` budget, in float64."""
    lt = logp_target.double()
    li = logp_inf.double()
    support = (lt > NEG_INF) & (li > NEG_INF)
    log_r = torch.where(support, lt - li, torch.full_like(lt, NEG_INF))
    log_r_sorted, order = torch.sort(log_r, dim=-1, descending=True)  # (R, V)
    p_inf = torch.where(support, li.exp(), torch.zeros_like(li)).gather(-1, order)
    log_tgt = torch.where(support, lt, torch.full_like(lt, NEG_INF)).gather(-1, order)
    # P_j: p_inf-mass of the j largest ratios; log Q_j: log p_target-mass of the others.
    zero = torch.zeros_like(p_inf[:, :1])
    p_cum = torch.cat([zero, p_inf.cumsum(-1)], dim=-1)  # (R, V+1)
    log_q = torch.cat(
        [torch.logcumsumexp(log_tgt.flip(-1), dim=-1).flip(-1), torch.full_like(zero, NEG_INF)],
        dim=-1,
    )  # (R, V+1)
    # Z at the breakpoint lam = r_(j): P_j + Q_j / r_(j), for j = 1..V; +inf off the support.
    valid = log_r_sorted > NEG_INF
    q_over_r = torch.exp(log_q[:, 1:] - torch.where(valid, log_r_sorted, torch.zeros_like(lt)))
    z_break = torch.where(valid, p_cum[:, 1:] + q_over_r, torch.full_like(lt, math.inf))
    max_budget = p_cum[:, -1]  # p_inf-mass on the joint support
    infeasible = budget > max_budget * (1 + tol) + tol
    if bool(infeasible.any()):
        idx = int(infeasible.nonzero()[0, 0])
        raise InfeasibleBudgetError(float(budget[idx]), float(max_budget[idx]))
    # Number of breakpoints whose Z is below the budget = the segment index j.
    j = (z_break < budget.unsqueeze(-1)).sum(-1, keepdim=True)  # (R, 1)
    n_valid = valid.sum(-1, keepdim=True)
    at_max = j >= n_valid  # budget == max feasible (within tol): lam = smallest ratio
    gap = (budget.unsqueeze(-1) - p_cum.gather(-1, j)).clamp(min=torch.finfo(lt.dtype).tiny)
    log_l = log_q.gather(-1, j) - gap.log()
    smallest = log_r_sorted.gather(-1, (n_valid - 1).clamp(min=0))
    return torch.where(at_max, smallest, log_l).squeeze(-1)


def draw_accept(accept_prob: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """0/1 accept outcomes ``m ~ Bernoulli(accept_prob)``; randomness only from ``generator``."""
    u = torch.rand(
        accept_prob.shape, generator=generator, dtype=accept_prob.dtype, device=accept_prob.device
    )
    return (u < accept_prob).to(accept_prob.dtype)
