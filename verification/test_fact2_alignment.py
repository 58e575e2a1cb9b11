"""Spec fact 2: ``KL(p_target || p_obrs) <= KL(p_target || p_inf)``, and exactly when it is strict.

Derivation (checked below on the code's ``post_rejection``). With ``r = p_target/p_inf``,
``Q(lam) = sum_{r < lam} p_target`` and ``M = sum_{p_target > 0} p_inf`` (max budget),
and p_inf covering p_target (otherwise both sides are ``+inf``):

    KL(p_t || p_obrs) = log Z(lam) + sum_x p_t(x) log max(r(x), lam)
    G(lam) := KL(p_t || p_inf) - KL(p_t || p_obrs) = -log Z(lam) - sum_{r < lam} p_t log(lam / r)
    G'(lam) = (Q(lam) / lam) * (1 / (lam Z(lam)) - 1) >= 0, as lam Z = sum min(lam p_inf, p_t) <= 1.

So the KL to p_obrs is non-increasing in ``lam`` and the inequality holds for EVERY
``lam > 0`` (G(0+) = -log M >= 0). It is:

- an equality ``inf = inf`` when p_inf does not cover p_target (p_inf(x) = 0 < p_target(x));
- STRICT for every lam when p_target has a zero where p_inf > 0 (M < 1): G >= -log M > 0,
  because those tokens are always rejected;
- otherwise (same support): an EQUALITY exactly when ``lam <= r_min = min_x r(x)``
  (then p_obrs = p_inf) or ``p_target = p_inf``; STRICT for every ``lam > r_min`` when
  p_target != p_inf (G is then strictly increasing on ``(r_min, r_max)`` and constant
  ``= KL(p_t || p_inf) > 0`` for ``lam >= r_max``, where p_obrs = p_target).

The same "never worse, non-increasing in lam" holds for every f-divergence (KL, reverse KL,
TV, Pearson chi-square, squared Hellinger): the feasible set ``{q <= p_inf / abar}`` grows as
the budget ``abar = Z(lam)`` falls, it contains p_inf, and OBRS is optimal on it (fact 3).

Tolerances: the code's p_obrs has relative error ``<= rel_tol`` (reference module), which
moves a divergence by at most ``rel_tol * sum_x |q_x dD/dq_x|`` (first order, doubled).
"""

from __future__ import annotations

import math

import mpmath
import torch
from hypothesis import given

from jackpot.functional import post_rejection
from verification import reference as ref
from verification.conftest import pair_and_lam, pairs, special_lams

TINY = torch.finfo(torch.float64).tiny


def _div_tol(name: str, p: list, q: list, tol: float) -> mpmath.mpf:
    return 2 * tol * ref.divergence_sensitivity(name, p, q) + TINY * len(p)


def _classify(lt: torch.Tensor, li: torch.Tensor, lam: float) -> str:
    pt, pi = ref.mp_probs(lt), ref.mp_probs(li)
    if any(t > 0 and i == 0 for t, i in zip(pt, pi, strict=True)):
        return "no_cover"
    if any(t == 0 and i > 0 for t, i in zip(pt, pi, strict=True)):
        return "target_zero_where_inf_positive"
    if torch.equal(lt, li):
        return "equal"
    r_min = min(x for x in ref.mp_ratios(lt, li) if x is not None)
    return "lam_at_most_r_min" if lam <= r_min else "strict"


@given(pair_and_lam())
def test_post_rejection_matches_exact(case: tuple[torch.Tensor, torch.Tensor, float]) -> None:
    """The code's ``p_obrs`` equals the 50-digit one within the rounding bound."""
    lt, li, lam = case
    q = ref.to_mp(post_rejection(lt, li, lam))
    exact = ref.mp_obrs(lt, li, lam)
    tol = ref.rel_tol(lt, li, lam=lam)
    for qx, ex in zip(q, exact, strict=True):
        assert abs(qx - ex) <= tol * ex + TINY
    assert abs(mpmath.fsum(q) - 1) <= tol


@given(pair_and_lam())
def test_kl_never_increases_and_exactly_when_strict(
    case: tuple[torch.Tensor, torch.Tensor, float],
) -> None:
    """``KL(p_t || p_obrs) <= KL(p_t || p_inf)`` for every lam; strictness as derived above."""
    lt, li, lam = case
    pt, pi = ref.mp_probs(lt), ref.mp_probs(li)
    q = ref.snap_underflow(ref.to_mp(post_rejection(lt, li, lam)), ref.mp_obrs(lt, li, lam))
    kl_inf = ref.divergence("kl", pt, pi)
    kl_obrs = ref.divergence("kl", pt, q)
    kind = _classify(lt, li, lam)
    if kind == "no_cover":
        assert kl_inf == ref.MP_INF
        assert kl_obrs == ref.MP_INF  # never-proposed mass cannot be recovered
        return
    tol = _div_tol("kl", pt, q, ref.rel_tol(lt, li, lam=lam))
    gap = kl_inf - kl_obrs
    exact_gap = kl_inf - ref.divergence("kl", pt, ref.mp_obrs(lt, li, lam))
    # closed form of the gap, G(lam) = -log Z - sum_{r<lam} p_t log(lam/r); the float
    # log-probs sum to 1 only up to rounding, so log Z carries the factor S = sum p_t
    r = ref.mp_ratios(lt, li)
    s = mpmath.fsum(pt)  # = 1 (renormalised reference), kept for clarity
    g = -s * mpmath.log(ref.mp_z(lt, li, lam)) - mpmath.fsum(
        t * mpmath.log(lam / rx) for t, rx in zip(pt, r, strict=True) if t > 0 and rx < lam
    )
    assert abs(g - exact_gap) <= mpmath.mpf(10) ** (-30) * (1 + abs(g))
    assert abs(gap - exact_gap) <= tol
    assert gap >= -tol  # never increases, for every lam
    if kind == "target_zero_where_inf_positive":
        off_support = mpmath.fsum(i for t, i in zip(pt, pi, strict=True) if t == 0)
        floor = -s * mpmath.log1p(-off_support)  # -log M, without cancellation
        assert floor > 0
        assert gap >= floor - tol  # strict for every lam
    elif kind in ("equal", "lam_at_most_r_min"):
        assert abs(gap) <= tol  # equality: p_obrs = p_inf
        t = ref.rel_tol(lt, li, lam=lam)
        for qx, ix in zip(q, pi, strict=True):
            assert abs(qx - ix) <= t * ix + TINY
    else:
        # strict: exactly (whenever 50 digits resolve a gap of O(1) terms) ...
        assert exact_gap > 0 or abs(exact_gap) < mpmath.mpf(10) ** (-40)
        if exact_gap > 2 * tol:  # ... and observably so in float64
            assert gap > 0


@given(pairs())
def test_divergences_non_increasing_in_lam_and_never_above_p_inf(
    pair: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """For all five divergences, along a lam grid through every breakpoint:
    ``D(p_t || p_obrs(lam))`` is non-increasing in lam and ``<= D(p_t || p_inf)``."""
    lt, li = pair
    grid = sorted({*special_lams(lt, li), *(10.0**e for e in (-3, -2, -1, -0.5, 0.5, 1, 2, 3))})
    pt, pi = ref.mp_probs(lt), ref.mp_probs(li)
    qs = [
        ref.snap_underflow(ref.to_mp(post_rejection(lt, li, lam)), ref.mp_obrs(lt, li, lam))
        for lam in grid
    ]
    for name in ref.DIVERGENCES:
        d_inf = ref.divergence(name, pt, pi)
        prev, prev_tol = None, 0.0
        for lam, q in zip(grid, qs, strict=True):
            d = ref.divergence(name, pt, q)
            assert not mpmath.isnan(d)
            if d == ref.MP_INF:
                assert d_inf == ref.MP_INF, (name, lam)
                assert prev is None or prev == ref.MP_INF
            else:
                tol = _div_tol(name, pt, q, ref.rel_tol(lt, li, lam=lam))
                assert d <= d_inf + tol, (name, lam)
                if prev is not None and prev != ref.MP_INF:
                    assert d <= prev + tol + prev_tol, (name, lam)
                prev_tol = tol
            prev = d


def test_fact2_worked_example() -> None:
    """A hand-checkable case: p_t = (0.5, 0.5), p_inf = (0.8, 0.2): r = (0.625, 2.5).
    lam <= 0.625: p_obrs = p_inf (equality); lam in (0.625, 2.5): strict and shrinking;
    lam >= 2.5: p_obrs = p_t, KL = 0. Tolerance 1e-14: about ten float64 operations on
    values below 3, each rounding by at most ``eps * 3``."""
    lt = torch.tensor([0.5, 0.5], dtype=torch.float64).log()
    li = torch.tensor([0.8, 0.2], dtype=torch.float64).log()
    kl_inf = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)

    def kl_obrs(lam: float) -> float:
        q = post_rejection(lt, li, lam)
        return float((0.5 * (0.5 / q).log()).sum())

    assert abs(kl_obrs(0.5) - kl_inf) <= 1e-14
    assert abs(kl_obrs(0.625) - kl_inf) <= 1e-14
    assert kl_obrs(1.0) < kl_inf - 0.1  # q = (0.5, 0.2) / 0.7 -> KL = log 0.7 + 0.5 log 2.5
    assert abs(kl_obrs(1.0) - (math.log(0.7) + 0.5 * math.log(2.5))) <= 1e-14
    assert kl_obrs(2.0) < kl_obrs(1.0)
    assert abs(kl_obrs(2.5)) <= 1e-14
    assert abs(kl_obrs(100.0)) <= 1e-14
