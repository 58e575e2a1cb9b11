"""Baseline weights against straightforward references written from verl's definitions
(``verl/trainer/ppo/rollout_corr_helper.py``; ``SAFETY_BOUND = 20``):

- token IS / TIS: ``exp(clamp(log p_ref - log p_inf, -20, 20))``, TIS truncated from above
  only (``.clamp(max=C)``), no lower truncation;
- IcePop / token rejection: keep iff ``alpha <= ratio <= beta`` on that clamped ratio;
- sequence IS (``seq_tis``): the product of the token ratios, i.e. ``exp`` of the masked SUM
  of the raw token log-ratios, clamped to +-20 after summing, then truncated at C;
- geometric mask (``geo_mask``, verl ``seq_mean_k1``): each token log-ratio clamped to +-20
  FIRST, then the masked MEAN, ``exp``, kept iff inside ``[alpha, beta]`` (verl bounds
  ``k1 = -mean``; the band used here, ``[0.5, 2]``, is symmetric, so the sign does not matter).

(verl divides by ``mask.sum() + 1e-8``; that moves the geometric mean by a relative 1e-8 and
only matters within 1e-8 of a band edge, which the examples avoid.) Two regimes: token
log-ratios inside +-20 (the clamp never acts on a token), and beyond it / ``p_ref = 0``.
"""

from __future__ import annotations

import math

import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from jackpot.functional import (
    geo_mean_log_ratio,
    icepop_mask,
    is_weight,
    log_ratio,
    seq_log_ratio,
    tis_weight,
)
from jackpot.samplers import SamplerInput, get_sampler
from verification import reference as ref

SAFETY = 20.0
ALPHA, BETA, CAP = 0.5, 2.0, 2.0


def verl_token_weight(lr: torch.Tensor) -> torch.Tensor:
    return lr.clamp(-SAFETY, SAFETY).exp()


def verl_seq_weight(lr: torch.Tensor, mask: torch.Tensor, cap: float) -> torch.Tensor:
    total = torch.where(mask.bool(), lr, torch.zeros_like(lr)).sum(-1, keepdim=True)
    return total.clamp(-SAFETY, SAFETY).exp().clamp(max=cap).expand_as(lr)


def verl_geo_mean(lr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    clamped = lr.clamp(-SAFETY, SAFETY)
    total = torch.where(mask.bool(), clamped, torch.zeros_like(lr)).sum(-1)
    return total / mask.sum(-1).clamp(min=1)


def verl_geo_keep(lr: torch.Tensor, mask: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    g = verl_geo_mean(lr, mask).clamp(-SAFETY, SAFETY).exp()
    return ((g >= lo) & (g <= hi)).unsqueeze(-1).expand_as(lr)


@st.composite
def token_batches(draw: st.DrawFn, max_abs: float, allow_zero_ref: bool):
    """``(logp_inf, logp_ref, mask)`` ``(B, T)``; ``log p_ref - log p_inf`` in ``+-max_abs``."""
    b, t = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    n = b * t
    li = draw(st.lists(st.floats(-40.0, 0.0), min_size=n, max_size=n))
    delta = draw(st.lists(st.floats(-max_abs, max_abs), min_size=n, max_size=n))
    lref = [min(i + d, 0.0) for i, d in zip(li, delta, strict=True)]
    if allow_zero_ref:
        zero = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        lref = [-math.inf if z else x for x, z in zip(lref, zero, strict=True)]
    mask = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    as_t = lambda xs: torch.tensor(xs, dtype=torch.float64).reshape(b, t)  # noqa: E731
    return as_t(li), as_t(lref), as_t([float(m) for m in mask])


def _raw(li: torch.Tensor, lref: torch.Tensor) -> torch.Tensor:
    return lref - li


def _away_from_edges(x: torch.Tensor, edges: tuple[float, ...]) -> bool:
    return all(bool(((x - e).abs() > 1e-9).all()) for e in edges)


def _check_token_level(li: torch.Tensor, lref: torch.Tensor, mask: torch.Tensor) -> None:
    lr = _raw(li, lref)
    on = mask.bool()
    tol = 8 * ref.EPS64 * (1 + 2 * SAFETY)
    atol = 4 * ref.EPS64 * float(li.abs().max() + lref[lref > -math.inf].abs().sum() + 1)
    assert torch.allclose(log_ratio(lref, li)[on], lr.clamp(-SAFETY, SAFETY)[on], 0, atol)
    w = verl_token_weight(lr)
    assert torch.allclose(is_weight(lref, li)[on], w[on], rtol=tol, atol=0)
    assert torch.allclose(tis_weight(lref, li, CAP)[on], w.clamp(max=CAP)[on], rtol=tol, atol=0)
    band = [math.log(ALPHA), math.log(BETA)]
    if _away_from_edges(lr.clamp(-SAFETY, SAFETY)[on], tuple(band)):
        keep = ((w >= ALPHA) & (w <= BETA)).double()
        assert torch.equal(icepop_mask(lref, li, ALPHA, BETA)[on], keep[on])
    batch = SamplerInput(li, lref, lref, mask)
    out = get_sampler("tis", cap=CAP)(batch)
    assert torch.allclose(out.weights, w.clamp(max=CAP) * mask, rtol=tol, atol=0)
    out = get_sampler("is")(batch)
    assert torch.allclose(out.weights, w * mask, rtol=tol, atol=0)


def _check_sequence_level(li: torch.Tensor, lref: torch.Tensor, mask: torch.Tensor) -> None:
    lr = _raw(li, lref)
    on = mask.bool()
    t = lr.shape[-1]
    tol = 8 * ref.EPS64 * t * (1 + ref.finite_max_abs(lr.reshape(-1)))
    batch = SamplerInput(li, lref, lref, mask)
    expected_w = verl_seq_weight(lr, mask, CAP)
    got_w = get_sampler("seq_tis", cap=CAP)(batch).weights
    assert torch.allclose(got_w[on], expected_w[on], rtol=tol, atol=0), (got_w, expected_w)
    assert torch.allclose(
        seq_log_ratio(lref, li, mask).clamp(-SAFETY, SAFETY),
        torch.where(on, lr, torch.zeros_like(lr)).sum(-1).clamp(-SAFETY, SAFETY),
        rtol=tol,
        atol=tol,
    )
    g = verl_geo_mean(lr, mask)
    assume(_away_from_edges(g.clamp(-SAFETY, SAFETY), (math.log(ALPHA), math.log(BETA))))
    got_g = geo_mean_log_ratio(lref, li, mask).clamp(-SAFETY, SAFETY)
    assert torch.allclose(got_g, g.clamp(-SAFETY, SAFETY), rtol=tol, atol=tol)
    keep = verl_geo_keep(lr, mask, ALPHA, BETA).double()
    got_mask = get_sampler("geo_mask", alpha=ALPHA, beta=BETA)(batch).mask
    assert torch.equal(got_mask[on], keep[on]), (got_mask, keep)


@given(token_batches(max_abs=20.0, allow_zero_ref=False))
def test_token_level_matches_verl_inside_clamp(case) -> None:
    _check_token_level(*case)


@given(token_batches(max_abs=60.0, allow_zero_ref=True))
def test_token_level_matches_verl_beyond_clamp(case) -> None:
    _check_token_level(*case)


@given(token_batches(max_abs=20.0, allow_zero_ref=False))
def test_sequence_level_matches_verl_inside_clamp(case) -> None:
    _check_sequence_level(*case)


@given(token_batches(max_abs=60.0, allow_zero_ref=True))
def test_sequence_level_matches_verl_beyond_clamp(case) -> None:
    """Token log-ratios beyond +-20 (or p_ref = 0): verl's sequence weight sums the RAW
    log-ratios and clamps the sum, its geometric mask clamps each token before the mean."""
    _check_sequence_level(*case)


def test_sequence_level_pinned_example() -> None:
    """Two tokens with log-ratios +30 and -28: the product of the ratios is e^2 (seq_tis
    weight min(e^2, 2) = 2, clamping the sum); geo_mask clamps each token first, +20 and -20,
    so the geometric mean is e^0 = 1 and the sequence is kept (the raw mean e^1 > beta = 2
    would reject it)."""
    li = torch.tensor([[-35.0, -1.0]], dtype=torch.float64)
    lref = torch.tensor([[-5.0, -29.0]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.float64)
    batch = SamplerInput(li, lref, lref, mask)
    assert get_sampler("seq_tis", cap=2.0)(batch).weights.tolist() == [[2.0, 2.0]]
    assert get_sampler("geo_mask", alpha=0.5, beta=2.0)(batch).mask.tolist() == [[1.0, 1.0]]
