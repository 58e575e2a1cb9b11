"""Spec fact 4 (and the budget half of fact 5): ``Z(lam)`` and its exact inversion.

- ``normalizer`` equals ``sum_x min(p_inf, p_target/lam)``, equals ``E_{p_inf}[a]`` computed
  from ``acceptance_prob``, and equals the sorted closed form
  ``sum_{r >= lam} p_inf + (1/lam) sum_{r < lam} p_target`` (the two exact forms agree to 50
  digits; the code within the rounding bound).
- ``Z`` is non-increasing and continuous: for ``lam1 < lam2``,
  ``0 <= Z(lam1) - Z(lam2) = int_{lam1}^{lam2} Q(t)/t^2 dt <= 1/lam1 - 1/lam2`` (``Q <= 1``),
  in particular no jump at any breakpoint ``lam = r_x``; and ``lam Z(lam)`` is non-decreasing.
- The largest feasible budget is the p_inf-mass on the support of p_target
  (``max_feasible_budget``); larger budgets raise ``InfeasibleBudgetError`` (a ValueError)
  whose message states that largest budget; budgets outside (0, 1] raise ValueError.
"""

from __future__ import annotations

import math
from itertools import pairwise

import mpmath
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from jackpot.functional import (
    InfeasibleBudgetError,
    acceptance_prob,
    log_normalizer,
    max_feasible_budget,
    normalizer,
    solve_lambda,
)
from verification import reference as ref
from verification.conftest import pair_and_lam, pairs, special_lams

TINY = torch.finfo(torch.float64).tiny


@given(pair_and_lam(overlap=False))
def test_normalizer_three_forms(case: tuple[torch.Tensor, torch.Tensor, float]) -> None:
    """Definition = sorted closed form (exactly) = code's ``normalizer`` = ``E_{p_inf}[a]``."""
    lt, li, lam = case
    z_def = ref.mp_z(lt, li, lam)
    z_sorted = ref.mp_z_sorted(lt, li, lam)
    assert abs(z_def - z_sorted) <= mpmath.mpf(10) ** (-45) * (1 + z_def)
    tol = ref.rel_tol(lt, li, lam=lam)
    z = normalizer(lt, li, lam)
    assert abs(ref.to_mp(z.reshape(1))[0] - z_def) <= tol * z_def + TINY
    log_z = float(log_normalizer(lt, li, lam))
    if z_def > 0:
        assert abs(log_z - float(mpmath.log(z_def))) <= tol
    else:
        assert log_z == -math.inf  # disjoint supports: Z = 0
    a = ref.to_mp(acceptance_prob(lt, li, lam))
    pi = ref.mp_probs(li)
    expected_acc = mpmath.fsum(i * ax for i, ax in zip(pi, a, strict=True))
    assert abs(expected_acc - z_def) <= 2 * tol * z_def + len(lt) * TINY


@given(pairs(overlap=False))
def test_z_non_increasing_continuous_lipschitz(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    """On a grid through every breakpoint ``r_x`` and ``r_x (1 +- 1e-9)``:
    ``0 <= Z(l1) - Z(l2) <= 1/l1 - 1/l2`` and ``l1 Z(l1) <= l2 Z(l2)`` (up to rounding)."""
    lt, li = pair
    base = special_lams(lt, li)
    grid = sorted(
        {
            *base,
            *(x * (1 + s * 1e-9) for x in base for s in (-1, 1)),
            *(10.0**e for e in range(-3, 4)),
        }
    )
    zs = normalizer(
        lt.expand(len(grid), -1), li.expand(len(grid), -1), torch.tensor(grid, dtype=torch.float64)
    )
    zs = [float(z) for z in zs]
    for (l1, z1), (l2, z2) in pairwise(zip(grid, zs, strict=True)):
        tol = ref.rel_tol(lt, li, lam=min(l1, l2)) * max(z1, z2) + TINY
        assert z1 >= z2 - tol, (l1, l2)
        assert z1 - z2 <= (1 / l1 - 1 / l2) + tol, (l1, l2)
        assert l1 * z1 <= l2 * z2 + (l1 + l2) * tol, (l1, l2)


@given(pairs())
def test_max_feasible_budget_is_inf_mass_on_target_support_and_reachable(
    pair: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """``max_feasible_budget = sum_{p_t > 0} p_inf`` and ``Z(solve_lambda(max)) = max``."""
    lt, li = pair
    top = ref.mp_max_budget(lt, li)
    code_top = float(max_feasible_budget(lt, li))
    tol = ref.rel_tol(lt, li)
    assert abs(code_top - top) <= tol * top + TINY
    assume(code_top > 1e-290)
    assume(ref.mp_solve_lambda(lt, li, code_top, normalize=False) >= 1e-300)
    lam = float(solve_lambda(lt, li, code_top))
    assert abs(ref.mp_z(lt, li, lam) - top) <= 2 * ref.rel_tol(lt, li, lam=lam) * top


@given(pairs())
def test_infeasible_budget_raises_with_the_largest_budget_in_the_message(
    pair: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """A budget above the maximum (by 1e-10, a million times its rounding error) raises
    ``InfeasibleBudgetError``, a ``ValueError`` carrying and printing the maximum."""
    lt, li = pair
    top = float(ref.mp_max_budget(lt, li))
    assume(top < 1 - 1e-9)
    for budget in (top + 1e-10 * max(top, 1e-3), (top + 1) / 2, 1.0):
        with pytest.raises(InfeasibleBudgetError) as info:
            solve_lambda(lt, li, budget)
        err = info.value
        assert isinstance(err, ValueError)
        assert abs(err.max_budget - top) <= ref.rel_tol(lt, li) * top + TINY
        assert err.budget == pytest.approx(budget, rel=1e-15)
        assert f"{err.max_budget:.6g}" in str(err)


def test_infeasible_budget_message_example() -> None:
    """p_target = (0.5, 0.5, 0), p_inf uniform: max budget 2/3, reported as 0.666667."""
    lt = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64).log()
    li = torch.full((3,), 1 / 3, dtype=torch.float64).log()
    assert float(max_feasible_budget(lt, li)) == pytest.approx(2 / 3, rel=1e-15)
    with pytest.raises(InfeasibleBudgetError, match=r"0\.666667"):
        solve_lambda(lt, li, 0.9)
    lam = float(solve_lambda(lt, li, 2 / 3))
    assert float(normalizer(lt, li, lam)) == pytest.approx(2 / 3, rel=1e-15)


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.0 + 1e-9, 2.0, math.nan])
def test_budget_outside_unit_interval_is_value_error(budget: float) -> None:
    lt = torch.tensor([0.3, 0.7], dtype=torch.float64).log()
    li = torch.tensor([0.6, 0.4], dtype=torch.float64).log()
    with pytest.raises(ValueError):
        solve_lambda(lt, li, budget)


@given(st.data())
def test_solve_lambda_rows_and_per_row_budgets(data: st.DataObject) -> None:
    """Batched rows with their own budgets solve each row exactly by ``Z``."""
    rows = [data.draw(pairs(min_v=5, max_v=5)) for _ in range(4)]
    lt = torch.stack([r[0] for r in rows])
    li = torch.stack([r[1] for r in rows])
    fracs = torch.tensor(data.draw(st.lists(st.floats(0.05, 1.0), min_size=4, max_size=4)))
    tops = max_feasible_budget(lt, li)
    budget = (fracs.double() * tops).clamp(min=1e-300)
    for k in range(4):
        assume(float(tops[k]) > 1e-290)
        assume(ref.mp_solve_lambda(lt[k], li[k], float(budget[k]), normalize=False) >= 1e-300)
    lam = solve_lambda(lt.reshape(2, 2, 5), li.reshape(2, 2, 5), budget.reshape(2, 2))
    assert lam.shape == (2, 2)
    for k, lam_k in enumerate(lam.reshape(-1).tolist()):
        z = ref.mp_z(lt[k], li[k], lam_k)
        assert abs(z - float(budget[k])) <= ref.rel_tol(lt[k], li[k], lam=lam_k) * z
