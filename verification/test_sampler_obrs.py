"""The ``obrs`` sampler: both aggregation modes by enumeration, budget mode, top-k + kappa,
truncation, and pinned regressions for its metrics.

Enumeration: a batch whose row ``p`` is one position (one distribution pair) and whose column
``x`` is "token x was sampled", for every x in the vocabulary. With the Bernoulli draw replaced
by its expectation (``draw_accept`` monkeypatched to return the acceptance probability), the
sampler's weights are ``a(x) rho(x)``, so the expected loss terms are exact sums:

- ``aggregation="proposal"`` (weight ``max(lam, r)``, normalised by proposed positions):
  ``sum_x p_inf(x) a(x) max(lam, r(x)) f(x) = E_{p_target}[f]`` position by position;
- ``aggregation="accepted"`` (weight ``Z max(lam, r)``, normalised by accepted tokens): the
  population form ``sum_p sum_x p_inf a w f / sum_p Z_p = sum_p Z_p E_p[f] / sum_p Z_p``, i.e.
  positions count in proportion to their ``Z_p`` (the spec's cross-position bias);
- truncation ``c1`` acts on whichever weight the mode uses: ``min(w, c1)``.

The sampler computes ``Z`` from logits in float32, so these checks use float32 inputs and the
float32 rounding bound.
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch

import jackpot.samplers.obrs as obrs_module
from jackpot.functional import (
    acceptance_prob,
    batch_lambda,
    kappa,
    normalizer,
    sparse_topk_normalizer,
)
from jackpot.samplers import SamplerInput, get_sampler
from verification import reference as ref

P, V = 4, 5


def _enumeration_batch(seed: int = 0) -> tuple[SamplerInput, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits_i = torch.randn(P, V, generator=g) * 1.5
    logits_t = logits_i + torch.randn(P, V, generator=g)
    logits_t[0, 1] = -math.inf  # a p_target = 0 token: always rejected
    li, lt = logits_i.log_softmax(-1), logits_t.log_softmax(-1)
    batch = SamplerInput(
        logp_inf=li,
        logp_ref=lt,  # p_ref = p_target: the c2 factor is 1 on every accepted token
        logp_target=lt,
        response_mask=torch.ones(P, V),
        logits_inf=logits_i[:, None, :].expand(P, V, V),
        logits_target=logits_t[:, None, :].expand(P, V, V),
    )
    return batch, lt, li


@pytest.fixture
def expected_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the Bernoulli draw by its expectation, ``m = a``."""
    monkeypatch.setattr(obrs_module, "draw_accept", lambda prob, generator=None: prob)


def _f(seed: int = 1) -> torch.Tensor:
    return torch.randn(P, V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.usefixtures("expected_mask")
@pytest.mark.parametrize("lam", [0.3, 1.0, 2.5])
def test_proposal_aggregation_unbiased_position_by_position(lam: float) -> None:
    batch, lt, li = _enumeration_batch()
    out = get_sampler("obrs", lam=lam, aggregation="proposal", c1=math.inf, c2=math.inf)(batch)
    assert torch.equal(out.norm_mask, batch.response_mask)  # normalised by proposals
    f = _f()
    for p in range(P):
        num = mpmath.fsum(
            ref.mp_probs(li[p])[x] * mpmath.mpf(float(out.weights[p, x])) * float(f[p, x])
            for x in range(V)
        )
        target = mpmath.fsum(ref.mp_probs(lt[p])[x] * float(f[p, x]) for x in range(V))
        tol = 2 * ref.rel_tol(lt[p].double(), li[p].double(), lam=lam, eps=ref.EPS32)
        assert abs(num - target) <= tol * float(f[p].abs().max()), p


@pytest.mark.usefixtures("expected_mask")
@pytest.mark.parametrize("lam", [0.3, 1.0, 2.5])
def test_accepted_aggregation_weights_positions_by_z(lam: float) -> None:
    batch, lt, li = _enumeration_batch()
    out = get_sampler("obrs", lam=lam, c1=math.inf, c2=math.inf)(batch)
    f = _f()
    num = den = want_num = ref.ZERO
    z = [ref.mp_z(lt[p].double(), li[p].double(), lam) for p in range(P)]
    for p in range(P):
        pi, pt = ref.mp_probs(li[p]), ref.mp_probs(lt[p])
        num += mpmath.fsum(pi[x] * float(out.weights[p, x]) * float(f[p, x]) for x in range(V))
        den += mpmath.fsum(pi[x] * float(out.norm_mask[p, x]) for x in range(V))
        want_num += z[p] * mpmath.fsum(pt[x] * float(f[p, x]) for x in range(V))
    tol = 4 * max(
        ref.rel_tol(lt[p].double(), li[p].double(), lam=lam, eps=ref.EPS32) for p in range(P)
    )
    assert abs(den - mpmath.fsum(z)) <= tol * mpmath.fsum(z)
    assert abs(num / den - want_num / mpmath.fsum(z)) <= tol * float(f.abs().max())
    # and it differs from the plain average over positions when the Z_p differ
    plain = (
        mpmath.fsum(
            mpmath.fsum(ref.mp_probs(lt[p])[x] * float(f[p, x]) for x in range(V)) for p in range(P)
        )
        / P
    )
    if max(z) - min(z) > 0.05:
        assert abs(want_num / mpmath.fsum(z) - plain) > 10 * tol * float(f.abs().max())


@pytest.mark.usefixtures("expected_mask")
@pytest.mark.parametrize("aggregation", ["accepted", "proposal"])
def test_truncation_acts_on_the_weight_of_the_mode(aggregation: str) -> None:
    batch, lt, li = _enumeration_batch()
    lam, c1 = 0.5, 1.2
    out = get_sampler("obrs", lam=lam, aggregation=aggregation, c1=c1, c2=math.inf)(batch)
    a = acceptance_prob(lt, li, lam).double()
    w = torch.maximum(torch.full_like(a, lam), (lt - li).exp().double())
    if aggregation == "accepted":
        w = w * normalizer(lt.double(), li.double(), lam)[:, None]
    want = torch.where(a > 0, a * w.clamp(max=c1), torch.zeros_like(a))
    tol = 4 * ref.rel_tol(lt.reshape(-1).double(), li.reshape(-1).double(), lam=lam, eps=ref.EPS32)
    assert torch.allclose(out.weights.double(), want, rtol=tol, atol=tol)


def test_c2_factor_is_truncated_ref_over_target() -> None:
    """``rho = min(w, c1) min(p_ref/p_target, c2)``; with lam <= min ratio every token is
    accepted (a = 1), so the weights are observable without randomness."""
    batch, lt, li = _enumeration_batch()
    keep = lt > -math.inf
    lam = float((lt - li)[keep].exp().min()) * 0.5
    lref = lt + torch.linspace(-1.0, 1.0, V)
    batch.logp_ref = lref
    out = get_sampler("obrs", lam=lam, aggregation="proposal", c1=math.inf, c2=1.5)(batch)
    w = torch.maximum(torch.full_like(lt, lam), (lt - li).exp())
    want = torch.where(keep, w * (lref - lt).exp().clamp(max=1.5), torch.zeros_like(w))
    assert torch.equal(out.mask, keep.float())
    assert torch.allclose(out.weights, want, rtol=8 * ref.EPS32, atol=0)


def _batch(seed: int, b: int = 6, t: int = 10, v: int = 8, k: int = 2) -> SamplerInput:
    g = torch.Generator().manual_seed(seed)
    logits_i = torch.randn(b, t, v, generator=g, dtype=torch.float64) * 2
    logits_t = logits_i + torch.randn(b, t, v, generator=g, dtype=torch.float64)
    li, lt = logits_i.log_softmax(-1), logits_t.log_softmax(-1)
    tok = torch.multinomial(li.exp().reshape(-1, v), 1, generator=g).reshape(b, t, 1)
    ids = torch.cat([li.topk(k, -1).indices, lt.topk(k, -1).indices], -1)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).double()
    return SamplerInput(
        logp_inf=li.gather(-1, tok)[..., 0],
        logp_ref=lt.gather(-1, tok)[..., 0],
        logp_target=lt.gather(-1, tok)[..., 0],
        response_mask=mask,
        topk_ids=ids,
        topk_logp_inf=li.gather(-1, ids),
        topk_logp_target=lt.gather(-1, ids),
        logits_inf=logits_i,
        logits_target=logits_t,
        generator=torch.Generator().manual_seed(seed + 1),
    )


@pytest.mark.parametrize("budget", [0.3, 0.7, 0.95])
def test_budget_mode_mean_acceptance_probability_equals_budget(budget: float) -> None:
    batch = _batch(3)
    out = get_sampler("obrs", budget=budget)(batch)
    lam = float(out.metrics["obrs/lam"])
    log_r = batch.logp_target - batch.logp_inf
    assert lam == float(batch_lambda(log_r, batch.response_mask, budget))
    valid = batch.response_mask.bool()
    mean_a = float(acceptance_prob(batch.logp_target, batch.logp_inf, lam)[valid].mean())
    tol = ref.rel_tol(log_r[valid], lam=lam)
    assert abs(mean_a - budget) <= tol * budget
    assert abs(float(out.metrics["obrs/accept_prob_mean"]) - budget) <= tol * budget


@pytest.mark.parametrize("estimator", ["prob", "count"])
def test_topk_path_uses_kappa_times_z_approx(estimator: str) -> None:
    batch = _batch(4)
    lam, c1 = 0.8, 3.0
    out = get_sampler("obrs", lam=lam, topk=2, kappa_estimator=estimator, c1=c1)(batch)
    resp = batch.response_mask
    a = acceptance_prob(batch.logp_target, batch.logp_inf, lam) * resp
    z_approx = sparse_topk_normalizer(
        batch.topk_ids, batch.topk_logp_target, batch.topk_logp_inf, lam
    )
    acceptance = a if estimator == "prob" else out.mask
    k = kappa(acceptance, z_approx, resp)
    assert float(out.metrics["obrs/kappa"]) == pytest.approx(float(k), rel=1e-12)
    z = (k * z_approx).clamp(max=1.0)
    w = z * torch.maximum(torch.full_like(a, lam), (batch.logp_target - batch.logp_inf).exp())
    want = w.clamp(max=c1) * out.mask
    assert torch.allclose(out.weights, want, rtol=1e-12, atol=0)


def test_exact_path_weights_use_exact_z() -> None:
    batch = _batch(5)
    lam = 1.3
    out = get_sampler("obrs", lam=lam, c1=math.inf)(batch)
    z = normalizer(batch.logits_target.log_softmax(-1), batch.logits_inf.log_softmax(-1), lam)
    r = (batch.logp_target - batch.logp_inf).exp()
    want = z * torch.maximum(torch.full_like(r, lam), r) * out.mask
    # Z comes from normalizer_from_logits, which computes in float32
    assert torch.allclose(out.weights, want, rtol=64 * ref.EPS32, atol=0)
    assert float(out.metrics["obrs/z_mean"]) == pytest.approx(
        float(z[batch.response_mask.bool()].mean()), rel=64 * ref.EPS32
    )


def test_regression_kl_after_metrics_finite_when_a_rejected_token_has_target_zero() -> None:
    """One response token with p_target(a_t) = 0 (always rejected): ``mismatch/kl_k1_after``
    and ``mismatch/kl_k3_after`` average over ACCEPTED tokens only, so that token must not
    make them NaN (it does via ``(-inf) - (-inf)`` times a zero mask)."""
    batch = _batch(6)
    batch.logp_target = batch.logp_target.clone()
    batch.logp_target[0, 0] = -math.inf
    batch.logp_ref = batch.logp_target
    out = get_sampler("obrs", lam=1.0)(batch)
    assert out.mask[0, 0] == 0
    for key in ("mismatch/kl_k1_after", "mismatch/kl_k3_after"):
        assert not bool(out.metrics[key].isnan()), key


def test_regression_mismatch_metric_ignores_padding() -> None:
    """``mismatch/kl_k1`` averages over the response only; a padding position whose stored
    log p_target is -inf must not turn it into NaN (``inf * 0``)."""
    batch = _batch(7)
    pad = batch.response_mask == 0
    assert bool(pad.any())
    batch.logp_target = torch.where(
        pad, torch.full_like(batch.logp_target, -math.inf), batch.logp_target
    )
    batch.logp_ref = batch.logp_target
    out = get_sampler("none")(batch)
    assert not bool(out.metrics["mismatch/kl_k1"].isnan())
    valid = ~pad
    want = float((batch.logp_inf - batch.logp_target)[valid].mean())
    assert float(out.metrics["mismatch/kl_k1"]) == pytest.approx(want, rel=1e-12)


def test_regression_budget_mode_with_empty_response_mask() -> None:
    """A batch with no response token (e.g. an all-padding micro-batch) must give zero
    weights, not ``ValueError`` from ``batch_lambda``."""
    batch = _batch(8)
    batch.response_mask = torch.zeros_like(batch.response_mask)
    out = get_sampler("obrs", budget=0.9)(batch)
    assert bool((out.weights == 0).all())


def test_regression_budget_mode_with_tiny_target_probability() -> None:
    """Sampled tokens with log r = -1e4 and a budget that needs some of them accepted: the
    sampler must return a valid output (the exact lam ~ e^-1e4 is not a float64)."""
    batch = _batch(9)
    batch.logp_target = batch.logp_target.clone()
    batch.logp_target[:, 0] = batch.logp_inf[:, 0] - 1e4
    batch.logp_ref = batch.logp_target
    batch.response_mask = torch.ones_like(batch.response_mask)
    out = get_sampler("obrs", budget=0.95)(batch)  # 10 % of tokens have log r = -1e4
    assert bool(out.weights.isfinite().all())
