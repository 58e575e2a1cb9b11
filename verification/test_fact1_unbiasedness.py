"""Spec fact 1: OBRS is exactly unbiased, in two forms, by enumeration over the vocabulary.

Per proposal: ``sum_x p_inf(x) a(x) max(lam, r(x)) f(x) = E_{p_target}[f]`` because
``p_inf a max(lam, r) = p_target`` pointwise (needs p_inf > 0 wherever p_target > 0).
Per accepted token: ``sum_x p_obrs(x) w(x) f(x) = E_{p_target}[f]`` with ``w = Z max(lam, r)``.
Mixing them up is off by exactly ``Z``.

Sums are taken to 50 digits over the code's float64 outputs; the tolerance is the derived
rounding bound :func:`verification.reference.rel_tol` times ``E_{p_target}|f|``, plus, for
every float result that underflows (``a = r/lam`` below 2.2e-308 is returned as 0 or a
subnormal), an absolute ``TINY = 2.2e-308`` times the factor that multiplies it. Examples whose
exact weight ``max(lam, r)`` overflows float64 (``r > 1.8e308``) are excluded: there the
float result ``inf`` is the correct rounding and the identity cannot hold in floats.
"""

from __future__ import annotations

import math

import mpmath
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from jackpot.functional import (
    acceptance_prob,
    normalizer,
    obrs_weight,
    post_rejection,
    proposal_weight,
)
from verification import reference as ref
from verification.conftest import pair_and_lam

LOG_FLOAT_MAX = math.log(torch.finfo(torch.float64).max)
TINY = torch.finfo(torch.float64).tiny


def f_values(v: int, low: float = -10.0, high: float = 10.0) -> st.SearchStrategy[list[float]]:
    return st.lists(st.floats(low, high), min_size=v, max_size=v)


def weights_representable(lt: torch.Tensor, li: torch.Tensor, lam: float) -> bool:
    """``max(lam, r)`` is a finite float64 on the joint support and ``Z`` a normal float."""
    return all(x < LOG_FLOAT_MAX - 1 for x in ref.joint_log_ratios(lt, li)) and (
        ref.mp_z(lt, li, lam) > 1e-290
    )


def expect(p: list[mpmath.mpf], f: list[float]) -> mpmath.mpf:
    return mpmath.fsum(px * fx for px, fx in zip(p, f, strict=True))


@given(st.data())
def test_per_proposal_pointwise_and_unbiased(data: st.DataObject) -> None:
    """``p_inf a max(lam, r) = p_target`` pointwise, hence the per-proposal mean is unbiased."""
    lt, li, lam = data.draw(pair_and_lam(cover=True))
    assume(weights_representable(lt, li, lam))
    f = data.draw(f_values(len(lt)))
    pt, pi = ref.mp_probs(lt), ref.mp_probs(li)
    a = ref.to_mp(acceptance_prob(lt, li, lam))
    w = ref.to_mp(proposal_weight(lt, li, lam))
    tol = 2 * ref.rel_tol(lt, li, lam=lam)
    bound = [tol * pt[x] + TINY * pi[x] * w[x] for x in range(len(lt))]
    for x in range(len(lt)):
        if pi[x] > 0:
            assert abs(pi[x] * a[x] * w[x] - pt[x]) <= bound[x], x
    lhs = mpmath.fsum(pi[x] * a[x] * w[x] * f[x] for x in range(len(lt)) if pi[x] > 0)
    rhs = expect(pt, f)
    assert abs(lhs - rhs) <= mpmath.fsum(b * abs(fx) for b, fx in zip(bound, f, strict=True))


@given(st.data())
def test_per_accepted_unbiased(data: st.DataObject) -> None:
    """``E_{p_obrs}[w f] = E_{p_target}[f]`` with ``w = obrs_weight = p_target / p_obrs``."""
    lt, li, lam = data.draw(pair_and_lam(cover=True))
    assume(weights_representable(lt, li, lam))
    f = data.draw(f_values(len(lt)))
    pt = ref.mp_probs(lt)
    q = ref.to_mp(post_rejection(lt, li, lam))
    w = ref.to_mp(obrs_weight(lt, li, lam))
    z = ref.to_mp(normalizer(lt, li, lam).reshape(1))[0]
    w_prop = ref.to_mp(proposal_weight(lt, li, lam))
    tol = 3 * ref.rel_tol(lt, li, lam=lam)
    bound = [tol * pt[x] + TINY * w[x] for x in range(len(lt))]
    for x in range(len(lt)):
        assert abs(w[x] - z * w_prop[x]) <= tol * w[x]  # w = Z max(lam, r)
        if q[x] > 0 or pt[x] * ref.mp_probs(li)[x] > 0:
            assert abs(q[x] * w[x] - pt[x]) <= bound[x], x  # w = p_target / p_obrs
    lhs = mpmath.fsum(q[x] * w[x] * f[x] for x in range(len(lt)) if q[x] > 0)
    err = mpmath.fsum(b * abs(fx) for b, fx in zip(bound, f, strict=True))
    assert abs(lhs - expect(pt, f)) <= err


@given(st.data())
def test_mixing_up_the_two_forms_is_off_by_exactly_z(data: st.DataObject) -> None:
    """Per-proposal sum with ``w = Z max`` gives ``Z E[f]``; per-accepted with ``max`` alone
    gives ``E[f] / Z``. ``f > 0`` so that ``E[f] > 0`` and the factor is observable."""
    lt, li, lam = data.draw(pair_and_lam(cover=True))
    assume(weights_representable(lt, li, lam))
    f = data.draw(f_values(len(lt), 0.1, 10.0))
    pt, pi = ref.mp_probs(lt), ref.mp_probs(li)
    a = ref.to_mp(acceptance_prob(lt, li, lam))
    q = ref.to_mp(post_rejection(lt, li, lam))
    w_acc = ref.to_mp(obrs_weight(lt, li, lam))
    w_prop = ref.to_mp(proposal_weight(lt, li, lam))
    z = ref.mp_z(lt, li, lam)
    ef = expect(pt, f)
    tol = 3 * ref.rel_tol(lt, li, lam=lam)
    v = range(len(lt))
    wrong_prop = mpmath.fsum(pi[x] * a[x] * w_acc[x] * f[x] for x in v if pi[x] > 0)
    err_prop = mpmath.fsum(f[x] * (tol * pt[x] * z + TINY * pi[x] * w_acc[x]) for x in v)
    wrong_acc = mpmath.fsum(q[x] * w_prop[x] * f[x] for x in v if q[x] > 0)
    err_acc = mpmath.fsum(f[x] * (tol * pt[x] / z + TINY * w_prop[x]) for x in v)
    assert abs(wrong_prop - z * ef) <= err_prop
    assert abs(wrong_acc - ef / z) <= err_acc


@given(st.data())
def test_without_coverage_unproposed_mass_is_lost(data: st.DataObject) -> None:
    """Where p_inf = 0 < p_target the token is never proposed: both forms then give
    ``E_{p_target}[f 1{p_inf > 0}]``, and ``obrs_weight`` is ``+inf`` there (documented)."""
    lt, li, lam = data.draw(pair_and_lam())
    assume(weights_representable(lt, li, lam))
    f = data.draw(f_values(len(lt)))
    pt, pi = ref.mp_probs(lt), ref.mp_probs(li)
    a = ref.to_mp(acceptance_prob(lt, li, lam))
    w_prop = ref.to_mp(proposal_weight(lt, li, lam))
    w_acc_t = obrs_weight(lt, li, lam)
    w_acc = ref.to_mp(w_acc_t)
    q = ref.to_mp(post_rejection(lt, li, lam))
    v = range(len(lt))
    target = mpmath.fsum(pt[x] * f[x] for x in v if pi[x] > 0)
    tol = 3 * ref.rel_tol(lt, li, lam=lam)
    per_prop = mpmath.fsum(pi[x] * a[x] * w_prop[x] * f[x] for x in v if pi[x] > 0)
    err_prop = mpmath.fsum(
        abs(f[x]) * (tol * pt[x] + TINY * pi[x] * w_prop[x]) for x in v if pi[x] > 0
    )
    per_acc = mpmath.fsum(q[x] * w_acc[x] * f[x] for x in v if q[x] > 0)
    err_acc = mpmath.fsum(abs(f[x]) * (tol * pt[x] + TINY * w_acc[x]) for x in v if pi[x] > 0)
    assert abs(per_prop - target) <= err_prop
    assert abs(per_acc - target) <= err_acc
    for x in v:
        if pi[x] == 0 and pt[x] > 0:
            assert float(w_acc_t[x]) == math.inf
            assert float(a[x]) == 1.0
            assert q[x] == 0
