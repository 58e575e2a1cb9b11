"""Fact 7: with the proposal weights, OBRS is importance sampling plus Bernoulli masking.

Given the sampled token ``x``, the mask ``m ~ Bernoulli(a(x))`` and the weight
``max(lam, r(x))`` (``r = p_target/p_inf``) multiply to the importance ratio on average:

    E[m max(lam, r) | x] = a(x) max(lam, r(x)) = r(x)        (r >= lam: 1 * r; r < lam: r/lam * lam)

So the per-proposal estimator ``g = m max(lam, r) f(x)`` has IS's conditional mean, and by the
law of total variance

    Var[g] = Var_IS[r f] + sum_x p_inf(x) a(x) (1 - a(x)) max(lam, r(x))^2 f(x)^2
           = Var_IS[r f] + sum_{r(x) < lam} p_inf(x) r(x) (lam - r(x)) f(x)^2   >= Var_IS.

The excess is zero exactly when every token with ``f != 0`` is accepted for sure
(``r >= lam``), and it grows with ``lam``, i.e. it shrinks as the acceptance budget rises.
Truncation does not change the picture: for a cap ``c >= lam``,
``E[m min(max(lam, r), c) | x] = min(r, c)``, truncated IS's weight, so at equal truncation
OBRS has TIS's bias and at least its variance. Whatever OBRS adds to a run must therefore come
from elsewhere: the truncation it permits, ``p_target = new`` and its ``c2`` factor, or the
rollout model trained beside it.

Enumeration over ``(x, m)`` to 50 digits on the code's float64 acceptance probabilities and
weights; pairs have full support and logits in [-12, 12], so every ratio is a normal float.
"""

from __future__ import annotations

import itertools

import mpmath
import torch
from hypothesis import given
from hypothesis import strategies as st

from jackpot.functional import acceptance_prob, normalizer, proposal_weight, solve_lambda
from verification import reference as ref
from verification.conftest import lams, pairs

F = st.floats(-10.0, 10.0)


def _enumerate(
    pi: list[mpmath.mpf], a: list[mpmath.mpf], w: list[mpmath.mpf], f: list[float]
) -> tuple[mpmath.mpf, mpmath.mpf]:
    """Mean and variance of ``m w(x) f(x)`` with ``x ~ p_inf``, ``m ~ Bernoulli(a(x))``,
    summed over all ``2 V`` outcomes."""
    outcomes = [(pi[x] * a[x], w[x] * f[x]) for x in range(len(pi))]
    outcomes += [(pi[x] * (1 - a[x]), mpmath.mpf(0)) for x in range(len(pi))]
    mean = mpmath.fsum(p * g for p, g in outcomes)
    return mean, mpmath.fsum(p * (g - mean) ** 2 for p, g in outcomes)


def _scales(
    pi: list[mpmath.mpf], w: list[mpmath.mpf], f: list[float]
) -> tuple[mpmath.mpf, mpmath.mpf]:
    """Error scales of a mean (``E|w f|``) and of a variance (``E (w f)^2 + E|w f|^2``)."""
    first = mpmath.fsum(pi[x] * abs(w[x] * f[x]) for x in range(len(pi)))
    return first, mpmath.fsum(pi[x] * (w[x] * f[x]) ** 2 for x in range(len(pi))) + first**2


def _moments(p: list[mpmath.mpf], g: list[mpmath.mpf]) -> tuple[mpmath.mpf, mpmath.mpf]:
    mean = mpmath.fsum(px * gx for px, gx in zip(p, g, strict=True))
    return mean, mpmath.fsum(px * (gx - mean) ** 2 for px, gx in zip(p, g, strict=True))


@given(st.data())
def test_mask_times_weight_is_the_importance_ratio_on_average(data: st.DataObject) -> None:
    """``a(x) max(lam, r(x)) = r(x)`` for every token, within the rounding bound."""
    lt, li = data.draw(pairs(full_support=True))
    lam = data.draw(lams(lt, li))
    a = ref.to_mp(acceptance_prob(lt, li, lam))
    w = ref.to_mp(proposal_weight(lt, li, lam))
    r = ref.mp_ratios(lt, li, normalize=False)
    tol = 2 * ref.rel_tol(lt, li, lam=lam)
    for x in range(len(lt)):
        assert r[x] is not None
        assert abs(a[x] * w[x] - r[x]) <= tol * r[x], x


@given(st.data())
def test_obrs_variance_is_importance_sampling_variance_plus_the_masking_term(
    data: st.DataObject,
) -> None:
    """Same mean as IS; variance = IS's + ``sum_{r < lam} p_inf r (lam - r) f^2`` >= IS's."""
    lt, li = data.draw(pairs(full_support=True))
    lam = data.draw(lams(lt, li))
    f = data.draw(st.lists(F, min_size=len(lt), max_size=len(lt)))
    pi, r = ref.mp_probs(li, normalize=False), ref.mp_ratios(lt, li, normalize=False)
    a = ref.to_mp(acceptance_prob(lt, li, lam))
    w = ref.to_mp(proposal_weight(lt, li, lam))
    mean, var = _enumerate(pi, a, w, f)
    is_mean, is_var = _moments(pi, [rx * fx for rx, fx in zip(r, f, strict=True)])
    excess = mpmath.fsum(
        pi[x] * r[x] * (lam - r[x]) * f[x] ** 2 for x in range(len(lt)) if r[x] < lam
    )
    m_scale, v_scale = _scales(pi, w, f)
    tol = 8 * ref.rel_tol(lt, li, lam=lam)
    assert abs(mean - is_mean) <= tol * m_scale
    assert abs(var - (is_var + excess)) <= 2 * tol * v_scale
    assert excess >= 0 and var >= is_var - 2 * tol * v_scale
    if all(r[x] >= lam or f[x] == 0 for x in range(len(lt))):  # nothing can be rejected
        assert excess == 0


@given(st.data())
def test_at_equal_truncation_obrs_has_tis_bias_and_at_least_its_variance(
    data: st.DataObject,
) -> None:
    """Cap ``c >= lam``: ``E[m min(max(lam, r), c) | x] = min(r, c)``, hence TIS's mean, and a
    variance no lower than TIS's."""
    lt, li = data.draw(pairs(full_support=True))
    lam = data.draw(lams(lt, li))
    cap = lam * data.draw(st.floats(1.0, 50.0))
    f = data.draw(st.lists(F, min_size=len(lt), max_size=len(lt)))
    pi, r = ref.mp_probs(li, normalize=False), ref.mp_ratios(lt, li, normalize=False)
    a = ref.to_mp(acceptance_prob(lt, li, lam))
    w = [min(wx, mpmath.mpf(cap)) for wx in ref.to_mp(proposal_weight(lt, li, lam))]
    tol = 8 * ref.rel_tol(lt, li, lam=lam)
    for x in range(len(lt)):
        assert r[x] is not None
        assert abs(a[x] * w[x] - min(r[x], cap)) <= tol * min(r[x], cap), x
    mean, var = _enumerate(pi, a, w, f)
    tis_mean, tis_var = _moments(pi, [min(rx, cap) * fx for rx, fx in zip(r, f, strict=True)])
    m_scale, v_scale = _scales(pi, w, f)
    assert abs(mean - tis_mean) <= tol * m_scale
    assert var >= tis_var - 2 * tol * v_scale


@given(st.data())
def test_the_masking_variance_shrinks_as_the_budget_rises(data: st.DataObject) -> None:
    """With ``lam`` solved for each budget, the excess over IS is non-increasing in the
    budget, and zero at the largest budget (every token accepted)."""
    lt, li = data.draw(pairs(full_support=True))
    f = data.draw(st.lists(F, min_size=len(lt), max_size=len(lt)))
    pi, r = ref.mp_probs(li, normalize=False), ref.mp_ratios(lt, li, normalize=False)
    excesses = []
    for budget in (0.3, 0.5, 0.7, 0.9, 0.95, 0.99, 1.0):
        lam = float(solve_lambda(lt, li, budget))
        assert abs(float(normalizer(lt, li, lam)) - budget) <= 1e-9
        excesses.append(
            mpmath.fsum(
                pi[x] * r[x] * (lam - r[x]) * f[x] ** 2 for x in range(len(lt)) if r[x] < lam
            )
        )
    tol = 1e-9 * _scales(pi, r, f)[1]
    assert all(b <= a + tol for a, b in itertools.pairwise(excesses))
    assert excesses[-1] <= tol


def test_a_worked_example() -> None:
    """Two tokens, p_target = (0.5, 0.5), p_inf = (0.8, 0.2), lam = 1: the first token
    (r = 0.625) is kept with probability 0.625 at weight 1, the second (r = 2.5) always at
    weight 2.5. For f = (1, 0): IS has variance 0.8 * 0.625^2 - 0.5^2 = 0.0625, OBRS adds
    0.8 * 0.625 * (1 - 0.625) = 0.1875."""
    lt = torch.tensor([0.5, 0.5], dtype=torch.float64).log()
    li = torch.tensor([0.8, 0.2], dtype=torch.float64).log()
    a = acceptance_prob(lt, li, 1.0)
    torch.testing.assert_close(a, torch.tensor([0.625, 1.0], dtype=torch.float64))
    mean, var = _enumerate(
        ref.mp_probs(li), ref.to_mp(a), ref.to_mp(proposal_weight(lt, li, 1.0)), [1.0, 0.0]
    )
    assert abs(mean - mpmath.mpf("0.5")) < 1e-12
    assert abs(var - (mpmath.mpf("0.0625") + mpmath.mpf("0.1875"))) < 1e-12
