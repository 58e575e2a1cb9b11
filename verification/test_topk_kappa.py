"""Cheap Z for large vocabularies: top-k ``Z_approx``, the batch ``kappa``, the batch ``lam``.

- ``topk_normalizer <= normalizer``; ``= normalizer`` at ``k = V`` (each token then appears
  twice in the candidate list: checks the de-duplication); non-decreasing in ``k`` whenever
  the top-k sets are unique (no tie at the k-th value of either distribution; with ties the
  value depends on tie-breaking, see test_fact5_edge_cases.py, and a valid tie-breaking at k
  need not be nested in one at k+1, so monotonicity is not a property of the definition).
- ``sparse_topk_normalizer`` with duplicated ids and unknown (``-inf``) p_inf entries equals
  the sum over unique ids of the best-informed term, is a lower bound of ``Z`` and does not
  depend on the order of the candidates.
- ``kappa`` (Monte Carlo, seeded): ``kappa * mean(Z_approx)`` estimates the mean exact ``Z``
  without bias for both estimators (within 5 standard errors computed from the sample),
  its sample variances match the exact ones (``Var(a)`` vs ``Z (1 - Z)`` per position, within
  5 standard errors of a sample variance), and the probability estimator has the lower
  variance (law of total variance: ``Var(m) = Var(a) + E[a (1 - a)]``).
- ``batch_lambda`` makes the mean acceptance probability over valid tokens equal the budget.
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from jackpot.functional import (
    InfeasibleBudgetError,
    acceptance_prob,
    batch_lambda,
    draw_accept,
    kappa,
    normalizer,
    sparse_topk_normalizer,
    topk_normalizer,
)
from verification import reference as ref
from verification.conftest import NEG_INF, pair_and_lam

TINY = torch.finfo(torch.float64).tiny


def _tie_at(x: list[float], k: int) -> bool:
    """The k-th and (k+1)-th largest finite values coincide (top-k set not unique)."""
    s = sorted(x, reverse=True)
    return k < len(s) and s[k - 1] == s[k] and s[k - 1] != NEG_INF


@given(pair_and_lam(overlap=False))
def test_topk_normalizer_lower_bound_exact_at_v_monotone_without_ties(
    case: tuple[torch.Tensor, torch.Tensor, float],
) -> None:
    lt, li, lam = case
    v = len(lt)
    z = ref.mp_z(lt, li, lam)
    tol = ref.rel_tol(lt, li, lam=lam)
    zk = [float(topk_normalizer(lt, li, lam, k)) for k in range(1, v + 1)]
    for k, val in enumerate(zk, start=1):
        assert val <= z * (1 + tol) + v * TINY, k
    assert abs(zk[-1] - z) <= tol * z + v * TINY  # k = V: the whole vocabulary, once
    assert float(topk_normalizer(lt, li, lam, v + 3)) == zk[-1]  # k > V is clamped
    x_i, x_t = ref.floats(li), ref.floats(lt)

    def unique(k: int) -> bool:
        return not (_tie_at(x_i, k) or _tie_at(x_t, k))

    pt, pi = ref.mp_probs(lt), ref.mp_probs(li)
    for k in range(1, v + 1):
        if unique(k):
            top = sorted(range(v), key=lambda i: -x_i[i])[:k]
            top += sorted(range(v), key=lambda i: -x_t[i])[:k]
            exact = mpmath.fsum(min(pi[i], pt[i] / lam) for i in set(top))
            assert abs(zk[k - 1] - exact) <= tol * exact + v * TINY, k
        if k < v and unique(k) and unique(k + 1):
            assert zk[k - 1] <= zk[k] * (1 + tol) + v * TINY, k


def test_topk_normalizer_rejects_k_below_one() -> None:
    lp = torch.tensor([0.5, 0.5], dtype=torch.float64).log()
    with pytest.raises(ValueError):
        topk_normalizer(lp, lp, 1.0, 0)


@given(st.data())
def test_sparse_topk_dedup_unknown_entries_and_order(data: st.DataObject) -> None:
    lt, li, lam = data.draw(pair_and_lam(overlap=False))
    v = len(lt)
    m = data.draw(st.integers(1, 2 * v))
    ids = data.draw(st.lists(st.integers(0, v - 1), min_size=m, max_size=m))
    unknown = data.draw(st.lists(st.booleans(), min_size=m, max_size=m))
    perm = data.draw(st.permutations(range(m)))
    ids_t = torch.tensor(ids)
    lt_e = lt[ids_t]
    li_e = torch.where(torch.tensor(unknown), torch.full_like(lt_e, NEG_INF), li[ids_t])
    pt, pi = ref.mp_probs(lt), ref.mp_probs(li)
    best: dict[int, mpmath.mpf] = {}
    for j, i in enumerate(ids):
        term = ref.ZERO if unknown[j] else min(pi[i], pt[i] / lam)
        best[i] = max(best.get(i, ref.ZERO), term)
    expected = mpmath.fsum(best.values())
    tol = ref.rel_tol(lt, li, lam=lam)
    got = float(sparse_topk_normalizer(ids_t, lt_e, li_e, lam))
    assert abs(got - expected) <= tol * expected + m * TINY
    assert got <= ref.mp_z(lt, li, lam) * (1 + tol) + m * TINY
    p = torch.tensor(perm)
    got_perm = float(sparse_topk_normalizer(ids_t[p], lt_e[p], li_e[p], lam))
    assert abs(got_perm - got) <= tol * expected + m * TINY
    # batched: two rows (the second reversed) with per-row lam
    both = sparse_topk_normalizer(
        torch.stack([ids_t, ids_t.flip(0)]),
        torch.stack([lt_e, lt_e.flip(0)]),
        torch.stack([li_e, li_e.flip(0)]),
        torch.tensor([lam, lam], dtype=torch.float64),
    )
    assert both.shape == (2,)
    assert all(abs(float(b) - got) <= tol * expected + m * TINY for b in both)


def test_sparse_topk_duplicates_count_once_with_the_known_entry() -> None:
    lt = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64).log()
    li = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64).log()
    ids = torch.tensor([2, 0, 2, 1, 0, 1])
    li_e = li[ids].clone()
    li_e[0] = NEG_INF  # token 2 first listed with p_inf unknown, then known
    got = float(sparse_topk_normalizer(ids, lt[ids], li_e, 1.0))
    assert got == pytest.approx(0.2 + 0.25 + 0.25, rel=4 * ref.EPS64)
    assert got == pytest.approx(float(normalizer(lt, li, 1.0)), rel=4 * ref.EPS64)


def test_kappa_monte_carlo_calibration_and_variance() -> None:
    g = torch.Generator().manual_seed(20260206)
    n_pos, v, k, n_batches, lam = 48, 16, 2, 4000, 1.0
    base = torch.randn(n_pos, v, generator=g, dtype=torch.float64) * 1.5
    lt = base.log_softmax(-1)
    li = (base + 0.8 * torch.randn(n_pos, v, generator=g, dtype=torch.float64)).log_softmax(-1)
    mask = (torch.rand(n_pos, generator=g) < 0.8).double()
    valid = mask.bool()
    z = normalizer(lt, li, lam)
    z_approx = topk_normalizer(lt, li, lam, k)
    acc = acceptance_prob(lt, li, lam)  # (N, V)
    tokens = torch.multinomial(li.exp(), n_batches, replacement=True, generator=g).T
    a = acc.gather(1, tokens.T).T  # (batches, N): a(a_t) of the sampled tokens
    m = draw_accept(a, generator=g)
    n = int(mask.sum())
    target = float(z[valid].mean())
    zbar = float(z_approx[valid].mean())
    est = {"prob": [], "count": []}
    for b in range(n_batches):
        for name, acceptance in (("prob", a[b]), ("count", m[b])):
            kap = kappa(acceptance[None], z_approx[None], mask[None])
            est[name].append(float(kap) * zbar)
            # identity: kappa * mean(Z_approx) is the masked mean acceptance
            mean_acc = float(acceptance[valid].mean())
            assert abs(est[name][-1] - mean_acc) <= 8 * n * ref.EPS64 * max(mean_acc, 1e-300)
    var_exact = {
        "prob": float(((li.exp() * acc**2).sum(-1) - z**2)[valid].sum()) / n**2,
        "count": float((z * (1 - z))[valid].sum()) / n**2,
    }
    assert var_exact["prob"] < var_exact["count"]
    sample_var = {}
    for name, values in est.items():
        x = torch.tensor(values, dtype=torch.float64)
        mean, var = float(x.mean()), float(x.var())
        se_mean = math.sqrt(var / n_batches)
        assert abs(mean - target) <= 5 * se_mean, (name, mean, target, se_mean)
        m4 = float(((x - mean) ** 4).mean())
        se_var = math.sqrt(max(m4 - var**2, 0.0) / n_batches)
        assert abs(var - var_exact[name]) <= 5 * se_var, (name, var, var_exact[name])
        sample_var[name] = var
    assert sample_var["prob"] < sample_var["count"]
    # the correction is needed: mean(Z_approx) is biased low by far more than 5 SE
    assert target - zbar > 5 * math.sqrt(sample_var["count"] / n_batches)


def test_kappa_edge_cases() -> None:
    z_approx = torch.tensor([[0.5, 0.25]])
    assert float(kappa(torch.tensor([[1.0, 0.0]]), z_approx, torch.zeros(1, 2))) == 1.0
    out = kappa(torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2), torch.ones(1, 2))
    assert not out.isnan() and float(out) == 1.0
    got = float(kappa(torch.tensor([[1.0, 0.0]]), z_approx, torch.tensor([[1.0, 0.0]])))
    assert got == pytest.approx(2.0, rel=4 * ref.EPS32)  # masked position ignored


log_ratios = st.one_of(
    st.floats(-30.0, 30.0), st.just(0.0), st.just(NEG_INF), st.sampled_from([-5.0, 5.0])
)


@given(st.data())
def test_batch_lambda_mean_acceptance_equals_budget(data: st.DataObject) -> None:
    b, t = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 6))
    lr = data.draw(st.lists(log_ratios, min_size=b * t, max_size=b * t))
    mk = data.draw(st.lists(st.booleans(), min_size=b * t, max_size=b * t))
    assume(any(mk))
    log_r = torch.tensor(lr, dtype=torch.float64).reshape(b, t)
    mask = torch.tensor(mk, dtype=torch.float64).reshape(b, t)
    valid = [x for x, keep in zip(lr, mk, strict=True) if keep]
    top = sum(1 for x in valid if x > NEG_INF) / len(valid)
    assume(top > 0)
    budget = data.draw(st.one_of(st.just(top), st.floats(1e-3, 1.0).map(lambda u: u * top)))
    assume(budget > 0)
    lam = float(batch_lambda(log_r, mask, budget))
    assert lam > 0 and math.isfinite(lam)
    mean_acc = mpmath.fsum(
        min(mpmath.mpf(1), mpmath.exp(mpmath.mpf(x)) / lam) for x in valid if x > NEG_INF
    ) / len(valid)
    tol = ref.rel_tol(valid, lam=lam)
    assert abs(mean_acc - budget) <= tol * budget
    if top < 1:
        with pytest.raises(InfeasibleBudgetError):
            batch_lambda(log_r, mask, min(1.0, top + 1e-6))


def test_batch_lambda_empty_mask_is_value_error() -> None:
    with pytest.raises(ValueError):
        batch_lambda(torch.zeros(2, 3), torch.zeros(2, 3), 0.5)
