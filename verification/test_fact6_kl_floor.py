"""Spec fact 6: no rejection rule removes more than ``log(1/abar)`` nats of KL at a position.

For every rule ``b in [0,1]^V`` with mean acceptance ``abar = sum p_inf b``:
``p_after = p_inf b / abar <= p_inf / abar``, so pointwise
``log(p_t / p_after) >= log(p_t / p_inf) + log abar`` and, averaging under p_t,
``KL(p_t || p_after) >= KL(p_t || p_inf) - log(1/abar)``.
Hence 0.051 nats at 95 % acceptance and 0.105 at 90 %; "95 % acceptance and 10x less KL"
needs ``KL_before - KL_before/10 <= 0.0513``, i.e. ``KL_before <= 0.057`` nats.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from jackpot.functional import post_rejection, solve_lambda
from verification import reference as ref
from verification.conftest import budgets, pairs, seeds

TINY = torch.finfo(torch.float64).tiny


@given(st.data())
def test_kl_floor_holds_for_obrs_and_random_rules(data: st.DataObject) -> None:
    lt, li = data.draw(pairs(cover=True))
    budget = data.draw(budgets(lt, li))
    assume(ref.mp_solve_lambda(lt, li, budget, normalize=False) >= 1e-300)
    lam = float(solve_lambda(lt, li, budget))
    pt, pi = ref.mp_probs(lt), ref.mp_probs(li)
    abar = ref.mp_z(lt, li, lam)
    q = ref.snap_underflow(ref.to_mp(post_rejection(lt, li, lam)), ref.mp_obrs(lt, li, lam))
    kl_before = ref.divergence("kl", pt, pi)
    kl_after = ref.divergence("kl", pt, q)
    tol = 2 * ref.rel_tol(lt, li, lam=lam) * ref.divergence_sensitivity("kl", pt, q)
    assert kl_after >= kl_before + mpmath.log(abar) - tol
    rng = np.random.default_rng(data.draw(seeds))
    for _ in range(8):
        b = ref.project_rule(rng.uniform(0, 1, len(lt)), pi, abar)
        kl_rule = ref.divergence("kl", pt, ref.rule_distribution(b, pi))
        assert kl_rule >= kl_before + mpmath.log(abar) - mpmath.mpf(10) ** (-40)


def test_floor_numbers_quoted_in_the_spec() -> None:
    assert round(math.log(1 / 0.95), 3) == 0.051
    assert round(math.log(1 / 0.90), 3) == 0.105
    # "10x less KL at 95 % acceptance" requires KL_before * 0.9 <= log(1/0.95)
    assert round(math.log(1 / 0.95) / 0.9, 3) == 0.057


def _report_pairs() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(8, generator=g, dtype=torch.float64) * 2
    zipf = -1.1 * torch.log(torch.arange(1, 1001, dtype=torch.float64))
    out = []
    for name, logits_t, logits_i in (
        ("V=8 mild", base, base + 0.1 * torch.randn(8, generator=g, dtype=torch.float64)),
        ("V=8 moderate", base, base + 0.5 * torch.randn(8, generator=g, dtype=torch.float64)),
        ("V=8 strong", base, base + 2.0 * torch.randn(8, generator=g, dtype=torch.float64)),
        ("V=8 one token", base, base + torch.tensor([3.0] + [0.0] * 7, dtype=torch.float64)),
        (
            "V=1000 zipf",
            zipf,
            zipf + 0.7 * torch.randn(1000, generator=g, dtype=torch.float64),
        ),
    ):
        out.append((name, logits_t.log_softmax(-1), logits_i.log_softmax(-1)))
    return out


def _kl(lt: torch.Tensor, log_q: torch.Tensor) -> float:
    return float((lt.exp() * (lt - log_q)).sum())


@pytest.mark.parametrize("budget", [0.95, 0.90])
def test_kl_drop_report(budget: float) -> None:
    """Measured KL drop of OBRS next to the bound; printed as a table (``pytest -s``)."""
    floor_drop = math.log(1 / budget)
    rows = []
    for name, lt, li in _report_pairs():
        lam = float(solve_lambda(lt, li, budget))
        kl_before = _kl(lt, li)
        kl_after = _kl(lt, post_rejection(lt, li, lam).log())
        tol = 4 * len(lt) * ref.rel_tol(lt, li, lam=lam) * (1 + kl_before)
        drop = kl_before - kl_after
        assert drop <= floor_drop + tol, name
        assert drop >= -tol, name  # and OBRS never increases KL (fact 2)
        if kl_before > floor_drop / 0.9:  # then "10x less KL" is impossible at this budget
            assert kl_after > kl_before / 10, name
        rows.append((name, kl_before, kl_after, drop))
    print(f"\nOBRS at budget {budget:.2f}: max possible drop log(1/abar) = {floor_drop:.4f} nats")
    print(f"{'pair':<16}{'KL before':>12}{'KL after':>12}{'drop':>10}{'ratio':>9}")
    for name, before, after, drop in rows:
        ratio = f"{before / after:>9.2f}x" if after > 1e-12 else f"{'(~0)':>10}"
        print(f"{name:<16}{before:>12.5f}{max(after, 0.0):>12.5f}{drop:>10.5f}{ratio}")
