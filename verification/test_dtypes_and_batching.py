"""Every function of ``jackpot.functional``: float32 in -> float32 out, float64 -> float64,
arbitrary leading batch dims (0 to 3), scalar or per-row ``lam`` / budget, and a batched
call equal to the row-by-row calls. float32 results are compared with float64 results of the
SAME (float32-rounded) inputs, within the float32 rounding bound ``rel_tol(eps=eps32)``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import jackpot.functional as F
from verification import reference as ref
from verification.conftest import NEG_INF, finite_logit

DTYPES = (torch.float32, torch.float64)


@st.composite
def batched_pairs(draw: st.DrawFn):
    """``(lead_shape, logits_t, logits_i)`` with p_inf covering p_target; zeros allowed."""
    lead = tuple(draw(st.lists(st.integers(1, 3), max_size=3)))
    v = draw(st.integers(2, 6))
    n = math.prod(lead)
    lts, lis = [], []
    for _ in range(n):
        lt = draw(st.lists(st.one_of(finite_logit, st.just(NEG_INF)), min_size=v, max_size=v))
        if all(x == NEG_INF for x in lt):
            lt[0] = 0.0
        li = [draw(finite_logit) for _ in range(v)]
        lts.append(lt)
        lis.append(li)
    shape = (*lead, v)
    return (
        lead,
        torch.tensor(lts, dtype=torch.float64).reshape(shape),
        torch.tensor(lis, dtype=torch.float64).reshape(shape),
    )


LOG_SPACE = {"log_acceptance_prob", "log_normalizer"}


def _close(
    got: torch.Tensor, want: torch.Tensor, tol: float, tiny: float, log_space: bool = False
) -> bool:
    """Within ``tol`` relative (linear quantities) or absolute (log-space ones: ``rel_tol``
    bounds the absolute error of a log), plus ``tiny`` for underflow; equal infinities pass."""
    want = torch.as_tensor(want, dtype=got.dtype)
    same = got == want
    allowed = tol if log_space else tol * want.abs() + tiny
    return bool(((got - want).abs() <= allowed).logical_or(same).all())


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=batched_pairs(), per_row=st.booleans(), lam0=st.floats(0.05, 20.0))
def test_obrs_functions_dtype_shape_and_rows(
    dtype: torch.dtype, case: tuple, per_row: bool, lam0: float
) -> None:
    lead, lt_logits, li_logits = case
    lt = torch.log_softmax(lt_logits.to(dtype), -1)
    li = torch.log_softmax(li_logits.to(dtype), -1)
    lam = (
        torch.linspace(0.5, 2.0, max(math.prod(lead), 1), dtype=dtype).reshape(lead) * lam0
        if per_row
        else lam0
    )
    eps = torch.finfo(dtype).eps
    tiny = torch.finfo(dtype).tiny
    tol = ref.rel_tol(lt.reshape(-1).double(), li.reshape(-1).double(), lam=lam0 * 4, eps=eps)
    full = {
        "log_acceptance_prob": F.log_acceptance_prob,
        "acceptance_prob": F.acceptance_prob,
        "proposal_weight": F.proposal_weight,
        "obrs_weight": F.obrs_weight,
        "post_rejection": F.post_rejection,
    }
    reduced = {
        "normalizer": F.normalizer,
        "log_normalizer": F.log_normalizer,
        "topk_normalizer": lambda a, b, c: F.topk_normalizer(a, b, c, 2),
    }
    rows_t = lt.reshape(-1, lt.shape[-1])
    rows_i = li.reshape(-1, li.shape[-1])
    lam_rows = lam.reshape(-1) if per_row else [lam] * rows_t.shape[0]
    for name, fn in {**full, **reduced}.items():
        out = fn(lt, li, lam)
        assert out.dtype == dtype, name
        assert out.shape == (lt.shape if name in full else lead), name
        for r in range(rows_t.shape[0]):
            row = fn(rows_t[r], rows_i[r], lam_rows[r])
            got_r = out.reshape(-1, *out.shape[len(lead) :])[r]
            assert _close(got_r, row, tol, tiny, name in LOG_SPACE), name
        if dtype == torch.float32:
            lam64 = lam.double() if per_row else lam
            want = fn(lt.double(), li.double(), lam64)
            assert _close(out.double(), want, tol, tiny, name in LOG_SPACE), name
    top = F.max_feasible_budget(lt, li)
    assert top.dtype == dtype and top.shape == lead
    budget = (0.5 * top) if per_row else 0.5 * float(top.min())
    sol = F.solve_lambda(lt, li, budget)
    assert sol.dtype == dtype and sol.shape == lead
    z = F.normalizer(lt.double(), li.double(), sol.double())
    want_z = 0.5 * top.double() if per_row else torch.full_like(z, budget)
    assert _close(z, want_z, 2 * tol, tiny)


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=batched_pairs())
def test_sparse_topk_and_token_level_dtypes(dtype: torch.dtype, case: tuple) -> None:
    lead, lt_logits, li_logits = case
    lt = torch.log_softmax(lt_logits.to(dtype), -1)
    li = torch.log_softmax(li_logits.to(dtype), -1)
    ids = torch.cat([li.topk(1, -1).indices, lt.topk(2, -1).indices], -1)
    z = F.sparse_topk_normalizer(ids, lt.gather(-1, ids), li.gather(-1, ids), 1.0)
    assert z.dtype == dtype and z.shape == lead
    # token-level (B, T) functions on the first two columns
    a, b = lt[..., 0], li[..., 1]
    mask = torch.ones_like(a)
    for fn in (F.kl_k1, F.kl_k2, F.kl_k3, F.log_ratio, F.is_weight):
        out = fn(a, b)
        assert out.dtype == dtype and out.shape == a.shape
    assert F.tis_weight(a, b, 2.0).dtype == dtype
    assert F.icepop_mask(a, b, 0.5, 2.0).dtype == dtype
    assert F.masked_mean(a, mask).dtype == dtype
    if a.dim() >= 1:
        assert F.seq_log_ratio(a, b, mask).shape == a.shape[:-1]
        assert F.geo_mean_log_ratio(a, b, mask).dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=batched_pairs(), chunk=st.integers(1, 4))
def test_logits_functions_dtype_and_exactness(dtype: torch.dtype, case: tuple, chunk: int) -> None:
    """``normalizer_from_logits`` / ``max_log_ratio_from_logits`` / ``topk_logprobs`` /
    ``token_logprobs``: dtype preserved for float32 and float64 logits, any chunk size, and
    equal to the log-prob functions on ``log_softmax(logits)`` within that dtype's rounding
    (a single position without leading dims is the regression test below)."""
    lead, lt_logits, li_logits = case
    if not lead:
        lead, lt_logits, li_logits = (1,), lt_logits[None], li_logits[None]
    lt_l, li_l = lt_logits.to(dtype), li_logits.to(dtype)
    lt, li = torch.log_softmax(lt_l, -1), torch.log_softmax(li_l, -1)
    eps, tiny = torch.finfo(dtype).eps, torch.finfo(dtype).tiny
    tol = 2 * ref.rel_tol(lt.reshape(-1).double(), li.reshape(-1).double(), lam=0.7, eps=eps)
    z = F.normalizer_from_logits(lt_l, li_l, 0.7, chunk_size=chunk)
    assert z.dtype == dtype and z.shape == lead
    assert _close(z, F.normalizer(lt, li, 0.7), tol, tiny)
    m = F.max_log_ratio_from_logits(lt_l, li_l, chunk_size=chunk)
    assert m.dtype == dtype and m.shape == lead
    want_m = torch.where(lt == NEG_INF, torch.full_like(lt, NEG_INF), lt - li).amax(-1)
    assert _close(m, want_m, tol, tiny, log_space=True)
    ids, lp = F.topk_logprobs(lt_l, 2, chunk_size=chunk)
    assert lp.dtype == dtype and ids.shape == (*lead, 2)
    assert _close(lp, lt.gather(-1, ids), tol, tiny, log_space=True)
    tok = F.token_logprobs(lt_l, ids[..., 0])
    assert tok.dtype == dtype and tok.shape == lead
    assert _close(tok, lt.gather(-1, ids[..., :1]).squeeze(-1), tol, tiny, log_space=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_regression_logits_functions_accept_a_single_position(dtype: torch.dtype) -> None:
    """``(V,)`` logits (``...`` = no leading dims) give a 0-d result like ``normalizer`` does."""
    lt_l = torch.tensor([0.0, 6.0, -1.0], dtype=dtype)
    li_l = torch.tensor([0.0, 0.0, 2.0], dtype=dtype)
    lt, li = torch.log_softmax(lt_l, -1), torch.log_softmax(li_l, -1)
    z = F.normalizer_from_logits(lt_l, li_l, 0.7)
    assert z.shape == () and float(z) == pytest.approx(float(F.normalizer(lt, li, 0.7)), rel=1e-6)
    m = F.max_log_ratio_from_logits(lt_l, li_l)
    assert m.shape == () and float(m) == pytest.approx(float((lt - li).max()), rel=1e-6)
