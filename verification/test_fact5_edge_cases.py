"""Spec fact 5: the edges a real implementation meets.

- A token with ``p_target = 0`` is rejected for every ``lam`` (acceptance, both weights and
  p_obrs exactly 0); a token with ``p_inf = 0 < p_target`` has acceptance 1 and weight
  ``+inf`` (module convention); nothing is NaN for any pair and lam.
- Ties at the top-k boundary: ``Z_approx`` is the sum over ``topk(p_inf) ∪ topk(p_target)``
  for SOME valid tie-breaking (checked against all of them), and different valid choices
  really give different values.
- lam is ill-conditioned when little p_target-mass lies below it: the solver is exact by
  ``Z`` while lam itself moves by ``kappa = Z lam / Q`` times the budget's relative change.
- lam below the float range (``p_target`` ratios near ``e^-1e4``): regression checks that the
  solver never returns the invalid ``lam = 0``.
"""

from __future__ import annotations

import itertools
import math

import mpmath
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jackpot.functional import (
    acceptance_prob,
    batch_lambda,
    log_acceptance_prob,
    normalizer,
    obrs_weight,
    post_rejection,
    proposal_weight,
    solve_lambda,
    topk_normalizer,
)
from verification import reference as ref
from verification.conftest import NEG_INF, log_softmax, pair_and_lam

TINY = torch.finfo(torch.float64).tiny
EXTREME_LAMS = (1e-300, 1e-30, 1e30, 1e300)


@given(pair_and_lam(overlap=False), st.sampled_from((None, *EXTREME_LAMS)))
def test_target_zero_is_always_rejected_and_nothing_is_nan(
    case: tuple[torch.Tensor, torch.Tensor, float], extreme: float | None
) -> None:
    lt, li, lam = case
    lam = extreme or lam
    a = acceptance_prob(lt, li, lam)
    log_a = log_acceptance_prob(lt, li, lam)
    w_prop = proposal_weight(lt, li, lam)
    for t in (a, log_a, w_prop, normalizer(lt, li, lam)):
        assert not t.isnan().any()
    assert ((a >= 0) & (a <= 1)).all()
    zero_t = lt == NEG_INF
    assert (a[zero_t] == 0).all() and (log_a[zero_t] == NEG_INF).all()
    assert (w_prop[zero_t] == 0).all() and (obrs_weight(lt, li, lam)[zero_t] == 0).all()
    never_proposed = (li == NEG_INF) & ~zero_t
    assert (a[never_proposed] == 1).all()
    assert (w_prop[never_proposed] == math.inf).all()
    if float(normalizer(lt, li, lam)) > 0:
        q = post_rejection(lt, li, lam)
        assert not q.isnan().any()
        assert (q[zero_t] == 0).all() and (q[never_proposed] == 0).all()
        assert (obrs_weight(lt, li, lam)[never_proposed] == math.inf).all()


FLOAT_MAX = torch.finfo(torch.float64).max


@given(pair_and_lam(), st.sampled_from((None, *EXTREME_LAMS)))
def test_obrs_weight_matches_exact_wherever_it_is_a_float(
    case: tuple[torch.Tensor, torch.Tensor, float], extreme: float | None
) -> None:
    """``obrs_weight = Z max(lam, r) = p_target / p_obrs``: wherever that exact value is a
    finite float64, the code must return it (not ``0 * inf = NaN`` from an underflowed ``Z``
    times an overflowed ``max(lam, r)``; a pinned instance of that is the regression test
    below)."""
    lt, li, lam = case
    lam = extreme or lam
    z = ref.mp_z(lt, li, lam)
    w = obrs_weight(lt, li, lam)
    tol = 2 * ref.rel_tol(lt, li, lam=lam)
    for x, (rx, wx) in enumerate(zip(ref.mp_ratios(lt, li), ref.floats(w), strict=True)):
        if rx is None or rx == 0 or rx == ref.MP_INF:
            continue  # conventions checked above
        exact = z * max(mpmath.mpf(lam), rx)
        if exact >= FLOAT_MAX:
            assert wx == math.inf, x
        else:
            assert abs(wx - exact) <= tol * exact + TINY * max(mpmath.mpf(lam), rx), (x, wx)


def test_regression_obrs_weight_nan_from_underflow_times_overflow() -> None:
    """p_target = softmax(0, 0, -1e4) ~ (1/2, 1/2, e^-1e4/2), p_inf = softmax(-1e4, -1e4, 0)
    ~ (e^-1e4, e^-1e4, 1), lam = 1: Z = 2.5 e^-1e4 underflows and max(lam, r) = e^1e4/2
    overflows, but the exact weight of tokens 0 and 1 is Z r = 1.25 (p_obrs = 0.4 there)."""
    lt = log_softmax([0.0, 0.0, -1e4])
    li = log_softmax([-1e4, -1e4, 0.0])
    q = post_rejection(lt, li, 1.0)
    assert q.tolist() == pytest.approx([0.4, 0.4, 0.2], rel=1e-12)
    w = obrs_weight(lt, li, 1.0)
    # log Z ~ -1e4 and log r ~ 1e4 are summed in log space: the rounding bound carries L = 1e4.
    assert w[:2].tolist() == pytest.approx([1.25, 1.25], rel=ref.rel_tol(lt, li)), w


def test_disjoint_supports_and_bad_lam_raise() -> None:
    lt = torch.tensor([0.0, NEG_INF], dtype=torch.float64)
    li = torch.tensor([NEG_INF, 0.0], dtype=torch.float64)
    assert float(normalizer(lt, li, 1.0)) == 0.0
    with pytest.raises(ValueError):
        post_rejection(lt, li, 1.0)
    ok = torch.tensor([0.5, 0.5], dtype=torch.float64).log()
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError):
            acceptance_prob(ok, ok, bad)
        with pytest.raises(ValueError):
            normalizer(ok, ok, bad)


def _valid_topk_sets(x: list[float], k: int) -> list[frozenset[int]]:
    """Every index set a correct top-k may return: all entries above the k-th value plus
    any choice among the entries equal to it."""
    kth = sorted(x, reverse=True)[k - 1]
    above = [i for i, v in enumerate(x) if v > kth]
    tied = [i for i, v in enumerate(x) if v == kth]
    return [frozenset(above + list(c)) for c in itertools.combinations(tied, k - len(above))]


def _z_over(lt: torch.Tensor, li: torch.Tensor, lam: float, ids: frozenset[int]) -> mpmath.mpf:
    pt, pi = ref.mp_probs(lt), ref.mp_probs(li)
    return mpmath.fsum(min(pi[x], pt[x] / lam) for x in ids)


tie_logits = st.lists(st.sampled_from([0.0, -1.0, -2.0, NEG_INF]), min_size=2, max_size=7)


@given(tie_logits, tie_logits, st.sampled_from([0.3, 1.0, 3.0]))
def test_topk_with_ties_is_one_valid_tie_breaking(
    t_logits: list[float], i_logits: list[float], lam: float
) -> None:
    v = min(len(t_logits), len(i_logits))
    t_logits, i_logits = t_logits[:v], i_logits[:v]
    for logits in (t_logits, i_logits):
        if all(x == NEG_INF for x in logits):
            logits[0] = 0.0
    lt, li = log_softmax(t_logits), log_softmax(i_logits)
    tol = ref.rel_tol(lt, li, lam=lam)
    for k in range(1, v + 1):
        got = float(topk_normalizer(lt, li, lam, k))
        candidates = {
            s_i | s_t
            for s_i in _valid_topk_sets(ref.floats(li), k)
            for s_t in _valid_topk_sets(ref.floats(lt), k)
        }
        values = [_z_over(lt, li, lam, s) for s in candidates]
        assert any(abs(got - z) <= tol * z + v * TINY for z in values), (k, got, values)


def test_topk_tie_breaking_changes_z_approx() -> None:
    """p_inf = (0.4, 0.4, 0.2) ties at k = 1; p_target's top-1 is token 1. The union is
    {0, 1} or {1}: Z_approx = 0.5 or 0.4 at lam = 1 (Z = 0.7) — both correct, they differ by
    min(p_inf(0), p_target(0)) = 0.1; the code returns one of the two."""
    li = torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64).log()
    lt = torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64).log()
    sets = {a | b for a in _valid_topk_sets(ref.floats(li), 1) for b in [frozenset({1})]}
    values = sorted(float(_z_over(lt, li, 1.0, s)) for s in sets)
    assert values == pytest.approx([0.4, 0.5], rel=1e-15)
    got = float(topk_normalizer(lt, li, 1.0, 1))
    assert min(abs(got - 0.4), abs(got - 0.5)) <= 4 * ref.EPS64
    assert float(normalizer(lt, li, 1.0)) == pytest.approx(0.7, rel=1e-15)


@pytest.mark.parametrize("delta", [1e-3, 1e-2, 0.1, 0.4])
def test_ill_conditioned_lam_is_exact_by_z(delta: float) -> None:
    """p_target = (1 - 1e-12, 1e-12), p_inf = (1/2, 1/2): ``Z(lam) = 1/2 + 1e-12/lam`` below 2,
    so budget ``1/2 + delta`` needs ``lam = 1e-12/delta``. The relative condition number of lam
    in the budget is ``kappa = Z lam / Q = (1/2 + delta)/delta``: lam can be off by
    ``kappa * eps`` (and is checked with exactly that allowance) while ``Z`` is exact."""
    lt = torch.tensor([math.log1p(-1e-12), math.log(1e-12)], dtype=torch.float64)
    li = torch.tensor([0.5, 0.5], dtype=torch.float64).log()
    budget = 0.5 + delta
    lam = float(solve_lambda(lt, li, budget))
    tol = ref.rel_tol(lt, li, lam=lam)
    assert abs(ref.mp_z(lt, li, lam) - budget) <= tol * budget
    exact = ref.mp_solve_lambda(lt, li, budget, normalize=False)
    kappa = budget / delta
    assert abs(lam - exact) <= kappa * tol * exact


def test_ill_conditioned_lam_moves_while_z_does_not() -> None:
    """Budget 1/2 + 1e-10 (kappa = 5e9): two budgets one ulp apart give lams that differ
    by about kappa ulps, while both are exact by ``Z`` — so a solver must be tested by ``Z``."""
    lt = torch.tensor([math.log1p(-1e-12), math.log(1e-12)], dtype=torch.float64)
    li = torch.tensor([0.5, 0.5], dtype=torch.float64).log()
    b1 = 0.5 + 1e-10
    b2 = math.nextafter(b1, 1.0)
    lam1, lam2 = float(solve_lambda(lt, li, b1)), float(solve_lambda(lt, li, b2))
    assert abs(lam1 - lam2) / lam1 > 1e3 * ref.EPS64
    for b, lam in ((b1, lam1), (b2, lam2)):
        assert abs(ref.mp_z(lt, li, lam) - b) <= ref.rel_tol(lt, li, lam=lam) * b


def _check_lambda_or_explicit_error(lt: torch.Tensor, li: torch.Tensor, budget: float) -> None:
    """Expected: either a usable ``lam > 0`` with ``Z(lam) = budget``, or a ValueError that
    says the budget cannot be met in this precision; never the invalid ``lam = 0``."""
    try:
        lam = solve_lambda(lt, li, budget)
    except ValueError:
        return
    lam_f = float(lam)
    assert lam_f > 0, f"solve_lambda returned lam={lam_f} for feasible budget {budget}"
    eps = ref.EPS32 if lt.dtype == torch.float32 else ref.EPS64
    z = ref.mp_z(lt.double(), li.double(), lam_f)
    assert abs(z - budget) <= ref.rel_tol(lt.double(), li.double(), lam=lam_f, eps=eps) * budget


@pytest.mark.parametrize("budget", [0.9, 1.0])
def test_regression_lam_underflow_float64(budget: float) -> None:
    """p_target = (1, e^-1e4), p_inf = (1/2, 1/2): every budget in (1/2, 1] is feasible
    (max budget 1), but the exact lam (about 2.5 e^-1e4) is below the float64 range."""
    lt = log_softmax([0.0, -1e4])
    li = torch.tensor([0.5, 0.5], dtype=torch.float64).log()
    _check_lambda_or_explicit_error(lt, li, budget)


def test_regression_lam_underflow_float32() -> None:
    """float32: p_target = (1, e^-120), p_inf = (1/2, 1/2), budget 0.9: exact lam
    e^-120 / 0.4 = 1.9e-52 exists in float64 but not in the float32 result."""
    lt = log_softmax([0.0, -120.0]).float()
    li = torch.tensor([0.5, 0.5]).log()
    _check_lambda_or_explicit_error(lt, li, 0.9)


def test_regression_batch_lambda_underflow() -> None:
    """batch_lambda on 10 tokens, one with log-ratio -1e4, budget 0.95 (max feasible 1):
    must give a usable lam > 0 (mean acceptance = 0.95) or an explicit ValueError."""
    log_r = torch.zeros(1, 10, dtype=torch.float64)
    log_r[0, 0] = -1e4
    try:
        lam = float(batch_lambda(log_r, torch.ones(1, 10), 0.95))
    except ValueError:
        return
    assert lam > 0, f"batch_lambda returned lam={lam}"
    mean_acc = sum(min(1.0, math.exp(float(x)) / lam) for x in log_r[0])
    assert abs(mean_acc / 10 - 0.95) <= 64 * ref.EPS64  # ten rounded terms and a sum
