"""KL estimators and weight diagnostics, by enumeration over the vocabulary.

With ``x ~ q`` (the sampler) and ``r = p(x)/q(x)``:
``E_q[k1] = E_q[-log r] = KL(q || p)`` (exact whenever it is finite);
``E_q[k3] = E_q[r - 1 - log r] = (sum_{q > 0} p) - 1 + KL(q || p)``: unbiased exactly when
p puts no mass outside the support of q, low by that mass otherwise (both checked), as long as
``|log r| <= 20`` (the code clamps at verl's bound; outside it k3 is deliberately biased).
``k3 >= 0`` always; ``k2 = (log r)^2 / 2``. ESS ``(sum w)^2 / (n sum w^2)`` lies in ``[0, 1]``.
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from jackpot.functional import (
    effective_sample_size,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_k3_reverse,
    masked_mean,
)
from verification import reference as ref
from verification.conftest import pairs

TINY = torch.finfo(torch.float64).tiny


def _k_tol(lq: torch.Tensor, lp: torch.Tensor) -> float:
    return ref.rel_tol(lq, lp)


@given(pairs(cover=True))
def test_k1_and_k3_unbiased_by_enumeration(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Sampler q = the first distribution (covered by p, so KL(q || p) is finite)."""
    lq, lp = pair  # p > 0 wherever q > 0
    sup = lq > -math.inf
    assume(bool(((lp - lq)[sup].abs() <= 20).all()))  # inside verl's clamp
    q, p = ref.mp_probs(lq), ref.mp_probs(lp)
    kl = ref.divergence("kl", q, p)
    k1 = ref.to_mp(kl_k1(lq[sup], lp[sup]))
    k3 = ref.to_mp(kl_k3(lq[sup], lp[sup]))
    qs = [x for x, s in zip(q, sup.tolist(), strict=True) if s]
    # each k is exp/log of a log-ratio with rel. error <= rel_tol; weighted by q (q r = p)
    tol = _k_tol(lq, lp) * (2 + mpmath.fsum(abs(a) * b for a, b in zip(k1, qs, strict=True)))
    assert abs(mpmath.fsum(a * b for a, b in zip(k1, qs, strict=True)) - kl) <= tol
    mass_outside = mpmath.fsum(x for x, s in zip(p, sup.tolist(), strict=True) if not s)
    e_k3 = mpmath.fsum(a * b for a, b in zip(k3, qs, strict=True))
    assert abs(e_k3 - (kl - mass_outside)) <= tol
    assert all(x >= 0 for x in k3)


@given(pairs(cover=True))
def test_k3_reverse_unbiased_for_the_kl_floor_direction(
    pair: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """``E_q[r log r - (r - 1)] = KL(p || q)`` when q covers p (here p = the first
    distribution, covered by the sampler q): the direction of the KL floor (fact 6)."""
    lp, lq = pair  # q > 0 wherever p > 0
    sup = lq > -math.inf
    assume(bool(((lp - lq)[sup & (lp > -math.inf)].abs() <= 20).all()))  # inside the clamp
    p, q = ref.mp_probs(lp), ref.mp_probs(lq)
    kl = ref.divergence("kl", p, q)
    k = ref.to_mp(kl_k3_reverse(lq[sup], lp[sup]))
    qs = [x for x, s in zip(q, sup.tolist(), strict=True) if s]
    tol = _k_tol(lq, lp) * (2 + mpmath.fsum(abs(a) * b for a, b in zip(k, qs, strict=True)))
    assert abs(mpmath.fsum(a * b for a, b in zip(k, qs, strict=True)) - kl) <= tol
    assert all(x >= 0 for x in k)


logp = st.one_of(st.floats(-50.0, 0.0), st.sampled_from([0.0, -700.0, -1e4]), st.just(-math.inf))


@given(st.lists(st.tuples(st.floats(-1e4, 0.0), logp), min_size=1, max_size=16))
def test_k3_non_negative_and_formulas(rows: list[tuple[float, float]]) -> None:
    """k3 >= 0 for any sampled-token log-probs (p may be 0); k1, k2 are their formulas."""
    lq = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    lp = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    k3 = kl_k3(lq, lp)
    assert not k3.isnan().any() and (k3 >= 0).all()
    assert torch.equal(kl_k1(lq, lp), lq - lp)
    finite = lp > -math.inf
    assert torch.allclose(kl_k2(lq, lp)[finite], 0.5 * (lp - lq)[finite] ** 2, rtol=4e-16)
    clamped = (lp - lq).clamp(-20, 20)
    ref_k3 = torch.expm1(clamped) - clamped
    assert torch.allclose(k3, ref_k3, rtol=8 * ref.EPS64, atol=0)


# sampler weights: 0, or in [e^-20, e^20] (TIS, IS) or below c1 (OBRS)
weights = st.lists(st.one_of(st.just(0.0), st.floats(1e-9, 5e8)), min_size=1, max_size=32)


@given(weights, st.data())
def test_ess_in_unit_interval(w: list[float], data: st.DataObject) -> None:
    mask = data.draw(st.lists(st.booleans(), min_size=len(w), max_size=len(w)))
    wt = torch.tensor(w, dtype=torch.float64)
    mt = torch.tensor(mask, dtype=torch.float64)
    ess = float(effective_sample_size(wt, mt))
    n = max(sum(mask), 1)
    assert 0.0 <= ess <= 1.0 + 4 * n * ref.EPS64
    kept = [x for x, m in zip(w, mask, strict=True) if m]
    if any(x > 0 for x in kept):
        s = mpmath.fsum(map(mpmath.mpf, kept))
        s2 = mpmath.fsum(mpmath.mpf(x) ** 2 for x in kept)
        exact = s * s / (len(kept) * s2)
        assert abs(ess - exact) <= 8 * n * ref.EPS64 * exact
    else:
        assert ess == 0.0


def test_regression_ess_is_scale_free() -> None:
    """ESS depends only on the relative weights: ``ESS(c w) = ESS(w)``. Weights whose squares
    leave the float64 range (OBRS with ``c1 = inf`` and ``r`` up to e^700 produces them) must
    not turn the metric into NaN (``inf / inf``) or 0 (``w^2`` underflowing)."""
    ones = torch.ones(2, dtype=torch.float64)
    for scale in (1e-300, 1e-170, 1e170, 1e300):
        w = torch.tensor([1.0, 3.0], dtype=torch.float64) * scale
        assert float(effective_sample_size(w, ones)) == pytest.approx(0.8, rel=1e-12), scale


def test_ess_reference_values() -> None:
    ones = torch.ones(5, dtype=torch.float64)
    assert float(effective_sample_size(3 * ones, ones)) == 1.0
    one_hot = torch.tensor([0.0, 0.0, 7.0, 0.0, 0.0], dtype=torch.float64)
    assert float(effective_sample_size(one_hot, ones)) == 0.2
    assert float(effective_sample_size(one_hot, torch.zeros(5))) == 0.0


@given(st.lists(st.tuples(st.floats(-1e6, 1e6), st.booleans()), min_size=1, max_size=16))
def test_masked_mean(rows: list[tuple[float, bool]]) -> None:
    v = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    m = torch.tensor([float(r[1]) for r in rows], dtype=torch.float64)
    got = float(masked_mean(v, m))
    kept = [r[0] for r in rows if r[1]]
    if not kept:
        assert got == 0.0
    else:
        exact = math.fsum(kept) / len(kept)
        assert abs(got - exact) <= 2 * len(rows) * ref.EPS64 * max(map(abs, kept))
