"""Spec fact 3: every reachable budget has a unique ``lam``, and OBRS is the optimal rule.

- ``solve_lambda(budget)`` gives ``Z(lam) = budget`` (checked by ``Z``, to 50 digits, within
  the rounding bound), and the solution is unique: ``Z`` is strictly decreasing around it.
- Among all acceptance rules ``b in [0,1]^V`` with ``sum_x p_inf b = abar``, OBRS minimises
  ``D(p_target || p_inf b / abar)`` for KL, reverse KL, TV, Pearson chi-square and squared
  Hellinger (Verine et al. prove it for every f-divergence). Compared (a) against random
  feasible rules and small perturbations of the OBRS rule itself (which would beat any
  non-optimal rule by a margin of order perturbation^2, far above the tolerance), and
  (b) against ``scipy.optimize.minimize(method="SLSQP")`` started from a random feasible rule.

Feasible rules are built exactly (50 digits, :func:`verification.reference.project_rule`) at
the budget ``abar = Z(lam)`` the code's float ``lam`` really achieves, so no budget mismatch
enters; the only error is the code's rounding of ``p_obrs`` (``rel_tol`` per entry), whose
effect on a divergence is bounded to first order by ``rel_tol * sum_x |q_x dD/dq_x|``.
Infinite divergences (p_inf not covering p_target, mass where p_target = 0) compare as
``inf <= inf``; the optimiser check uses fully supported pairs so every value is finite.
"""

from __future__ import annotations

import math
import warnings

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from jackpot.functional import acceptance_prob, normalizer, post_rejection, solve_lambda
from verification import reference as ref
from verification.conftest import budgets, n_examples, pairs, seeds

TINY = torch.finfo(torch.float64).tiny


def representable(lt: torch.Tensor, li: torch.Tensor, budget: float, tiny: float) -> bool:
    """The exact lam of the code's own problem is at least ``tiny``."""
    return ref.mp_solve_lambda(lt, li, budget, normalize=False) >= tiny


def _solve(lt: torch.Tensor, li: torch.Tensor, budget: float) -> float:
    """The code's lam, skipping budgets whose exact lam is below 1e-300: float64 cannot
    hold them (covered by the dedicated regression test in test_fact5_edge_cases.py)."""
    assume(representable(lt, li, budget, 1e-300))
    return float(solve_lambda(lt, li, budget))


@given(st.data())
def test_solve_lambda_is_exact_by_z_and_unique(data: st.DataObject) -> None:
    """``Z(solve_lambda(b)) = b``; below the maximal budget ``Z`` strictly decreases through
    the solution, so no other lam has the same ``Z`` (uniqueness)."""
    lt, li = data.draw(pairs())
    budget = data.draw(budgets(lt, li))
    lam = _solve(lt, li, budget)
    assert math.isfinite(lam) and lam > 0
    z_exact = ref.mp_z(lt, li, lam)
    tol = ref.rel_tol(lt, li, lam=lam)
    assert abs(z_exact - budget) <= tol * budget
    z_code = float(normalizer(lt, li, lam))
    assert abs(z_code - budget) <= 2 * tol * budget
    top = ref.mp_max_budget(lt, li)
    if budget < top * (1 - 4 * tol):
        h = mpmath.mpf("1e-6")
        assert ref.mp_z(lt, li, lam * (1 + h)) < z_exact
        r_min = min(x for x in ref.mp_ratios(lt, li) if x is not None and x > 0)
        if lam * (1 - h) > r_min:
            assert ref.mp_z(lt, li, lam * (1 - h)) > z_exact
    elif budget == float(top):  # maximal budget: the largest lam reaching it is r_min
        r_min = min(x for x in ref.mp_ratios(lt, li) if x is not None and x > 0)
        assert abs(lam - r_min) <= tol * r_min


@given(st.data())
def test_solve_lambda_float32(data: st.DataObject) -> None:
    """float32 log-probs: lam is float32 and hits the budget within float32 rounding (the
    rounding of lam to float32 moves ``Z`` by at most ``eps32 * Z``, since ``|dlog Z/dlog lam|
    <= 1``)."""
    lt, li = data.draw(pairs())
    lt32, li32 = lt.float(), li.float()
    lt64, li64 = lt32.double(), li32.double()  # the float32 inputs, exactly
    budget = data.draw(budgets(lt64, li64))
    assume(representable(lt64, li64, budget, 1e-30))  # float32 lam underflows below 1.2e-38
    lam = solve_lambda(lt32, li32, budget)
    assert lam.dtype == torch.float32
    tol = ref.rel_tol(lt64, li64, lam=float(lam), eps=ref.EPS32)
    assert abs(ref.mp_z(lt64, li64, float(lam)) - budget) <= tol * budget


def _random_rules(rng: np.random.Generator, a_obrs: list[float], v: int) -> list[list[float]]:
    rules = [list(rng.uniform(0, 1, v)) for _ in range(12)]
    rules += [list(rng.uniform(0, 1, v) ** 4) for _ in range(4)]  # mostly-reject rules
    rules += [[1.0] * v, [0.5] * v]  # scaled to the budget: p_after = p_inf
    for sigma in (0.3, 1e-2, 1e-4):
        rules += [list(np.asarray(a_obrs) + rng.normal(0, sigma, v)) for _ in range(4)]
    return rules


@given(st.data())
@settings(max_examples=n_examples(0.5))
def test_obrs_beats_every_feasible_rule(data: st.DataObject) -> None:
    """``D(p_t || p_obrs) <= D(p_t || p_inf b / abar)`` for random and near-OBRS rules ``b``."""
    lt, li = data.draw(pairs())
    budget = data.draw(budgets(lt, li))
    lam = _solve(lt, li, budget)
    rng = np.random.default_rng(data.draw(seeds))
    pt, pi = ref.mp_probs(lt), ref.mp_probs(li)
    abar = ref.mp_z(lt, li, lam)  # the budget the code's lam achieves, exactly
    q_exact = ref.mp_obrs(lt, li, lam)
    q = ref.snap_underflow(ref.to_mp(post_rejection(lt, li, lam)), q_exact)
    tol = ref.rel_tol(lt, li, lam=lam)
    a = [float(x) for x in acceptance_prob(lt, li, lam)]
    rules = [ref.project_rule(b, pi, abar) for b in _random_rules(rng, a, len(lt))]
    for name in ref.DIVERGENCES:
        d_obrs = ref.divergence(name, pt, q)
        assert not mpmath.isnan(d_obrs)
        slack = 2 * tol * ref.divergence_sensitivity(name, pt, q) + TINY * len(lt)
        for b in rules:
            d_b = ref.divergence(name, pt, ref.rule_distribution(b, pi))
            if d_obrs == ref.MP_INF:
                assert d_b == ref.MP_INF, name
            else:
                assert d_obrs <= d_b + slack, (name, b)


def _objective(name: str, p: np.ndarray, pinf: np.ndarray, abar: float):
    """``D(p || pinf b / abar)`` and its gradient in ``b`` (float64, q clipped at 1e-300)."""

    def fun(b: np.ndarray) -> tuple[float, np.ndarray]:
        q = np.maximum(pinf * b / abar, 1e-300)
        if name == "kl":
            val, dq = np.sum(p * np.log(p / q)), -p / q
        elif name == "reverse_kl":
            val, dq = np.sum(q * np.log(q / p)), np.log(q / p) + 1
        elif name == "tv":
            val, dq = 0.5 * np.sum(np.abs(p - q)), 0.5 * np.sign(q - p)
        elif name == "chi2":
            val, dq = np.sum((p - q) ** 2 / q), 1 - (p / q) ** 2
        else:
            val, dq = np.sum((np.sqrt(p) - np.sqrt(q)) ** 2), 1 - np.sqrt(p / q)
        return float(val), dq * pinf / abar

    return fun


@pytest.mark.parametrize("name", ref.DIVERGENCES)
@given(st.data())
@settings(max_examples=n_examples(0.4))
def test_obrs_beats_numerical_optimiser(name: str, data: st.DataObject) -> None:
    """OBRS <= the SLSQP optimum over ``b in [0,1]^V`` with ``p_inf . b = abar`` (+ rounding).

    The optimiser's point is made exactly feasible (clip, then :func:`project_rule` at 50
    digits) before it is scored, so it is a genuine competitor whatever SLSQP reports."""
    lt, li = data.draw(pairs(full_support=True, max_v=6))
    frac = data.draw(st.sampled_from([0.3, 0.6, 0.9, 0.95, 0.99]))
    lam = _solve(lt, li, frac)
    abar = ref.mp_z(lt, li, lam)
    pt, pi = ref.mp_probs(lt), ref.mp_probs(li)
    q = ref.snap_underflow(ref.to_mp(post_rejection(lt, li, lam)), ref.mp_obrs(lt, li, lam))
    d_obrs = ref.divergence(name, pt, q)
    slack = 2 * ref.rel_tol(lt, li, lam=lam) * ref.divergence_sensitivity(name, pt, q)
    p_np = np.array([float(x) for x in pt])
    pinf_np = np.array([float(x) for x in pi])
    rng = np.random.default_rng(data.draw(seeds))
    start = [float(x) for x in ref.project_rule(rng.uniform(0, 1, len(lt)), pi, abar)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SLSQP may warn on clipping to the bounds
        res = minimize(
            _objective(name, p_np, pinf_np, float(abar)),
            np.array(start),
            jac=True,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * len(lt),
            constraints=[
                {"type": "eq", "fun": lambda b: pinf_np @ b - float(abar), "jac": lambda b: pinf_np}
            ],
            options={"ftol": 1e-15, "maxiter": 500},
        )
    b_opt = ref.project_rule(np.clip(res.x, 0.0, 1.0), pi, abar)
    d_opt = ref.divergence(name, pt, ref.rule_distribution(b_opt, pi))
    assert d_obrs <= d_opt + slack
