"""Hypothesis profiles and the shared strategies of the verification suite.

Profiles (``HYPOTHESIS_PROFILE`` env var, default ``ci``):

- ``ci``: derandomised (the same examples on every run), 60 examples per property,
  no deadline, failing examples printed with a reproduction blob.
- ``thorough``: 2000 randomised examples per property.

Neither profile writes an example database (nothing is written outside ``verification/``).

Strategies build small-vocabulary (V in 2..8) float64 log-prob vectors from logits that mix
ordinary values with zeros (``-inf``), one-hots, ``p = q``, and extreme log-probs (-700,
-1e4), with the two distributions on the same or different supports.
"""

from __future__ import annotations

import math
import os

import torch
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st

from verification import reference as ref

settings.register_profile(
    "ci",
    max_examples=60,
    derandomize=True,
    deadline=None,
    print_blob=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=2000,
    derandomize=False,
    deadline=None,
    print_blob=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def n_examples(fraction: float) -> int:
    """A share of the active profile's ``max_examples`` (for the expensive properties)."""
    return max(5, int(settings.default.max_examples * fraction))


NEG_INF = -math.inf
EXTREME_LOGITS = (-700.0, -1e4)
finite_logit = st.floats(-12.0, 12.0, allow_nan=False, allow_infinity=False)
any_logit = st.one_of(finite_logit, st.sampled_from([*EXTREME_LOGITS, NEG_INF]))
vocab_size = st.integers(2, 8)

DIST_KINDS = ("random", "zeros", "onehot", "extreme", "uniform")
PAIR_MODES = (
    "independent",
    "equal",
    "same_support",
    "target_zeros",
    "inf_zeros",
    "extreme_same_support",
    "extreme_any",
    "onehot_target",
    "onehot_inf",
)


def log_softmax(logits: list[float]) -> torch.Tensor:
    """float64 log-probs of the logits (``-inf`` stays ``-inf``)."""
    return torch.log_softmax(torch.tensor(logits, dtype=torch.float64), dim=-1)


@st.composite
def logit_vectors(draw: st.DrawFn, v: int, kind: str | None = None) -> list[float]:
    """Logits of one distribution over ``v`` tokens, with at least one finite entry."""
    kind = kind or draw(st.sampled_from(DIST_KINDS))
    if kind == "random":
        out = draw(st.lists(finite_logit, min_size=v, max_size=v))
    elif kind == "zeros":
        out = draw(st.lists(st.one_of(finite_logit, st.just(NEG_INF)), min_size=v, max_size=v))
    elif kind == "onehot":
        out = [NEG_INF] * v
    elif kind == "extreme":
        out = draw(st.lists(any_logit, min_size=v, max_size=v))
    elif kind == "uniform":
        out = [0.0] * v
    else:
        raise ValueError(kind)
    if all(x == NEG_INF for x in out):
        out[draw(st.integers(0, v - 1))] = 0.0
    return out


@st.composite
def pairs(
    draw: st.DrawFn,
    *,
    cover: bool = False,
    overlap: bool = True,
    full_support: bool = False,
    min_v: int = 2,
    max_v: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logp_target, logp_inf)``, float64 ``(V,)``.

    ``cover``: p_inf > 0 wherever p_target > 0 (fact 1's assumption). ``overlap``: the supports
    meet (``Z > 0``). ``full_support``: both strictly positive everywhere (finite divergences).
    """
    v = draw(st.integers(min_v, max_v))
    mode = draw(st.sampled_from(PAIR_MODES))
    if full_support:
        lt_l = draw(st.lists(finite_logit, min_size=v, max_size=v))
        li_l = lt_l if mode == "equal" else draw(st.lists(finite_logit, min_size=v, max_size=v))
        return log_softmax(lt_l), log_softmax(li_l)
    if mode == "independent":
        lt_l, li_l = draw(logit_vectors(v)), draw(logit_vectors(v))
    elif mode == "equal":
        lt_l = draw(logit_vectors(v))
        li_l = list(lt_l)
    elif mode in ("same_support", "extreme_same_support"):
        kind = "zeros" if mode == "same_support" else "extreme"
        lt_l = draw(logit_vectors(v, kind))
        elem = (
            finite_logit
            if mode == "same_support"
            else st.one_of(finite_logit, *[st.just(x) for x in EXTREME_LOGITS])
        )
        li_l = [draw(elem) if x != NEG_INF else NEG_INF for x in lt_l]
    elif mode == "target_zeros":
        lt_l = draw(logit_vectors(v, "zeros"))
        lt_l[draw(st.integers(0, v - 1))] = NEG_INF
        if all(x == NEG_INF for x in lt_l):
            lt_l[0] = 0.0
        li_l = draw(logit_vectors(v, "random"))
    elif mode == "inf_zeros":
        lt_l = draw(logit_vectors(v, "random"))
        li_l = draw(logit_vectors(v, "zeros"))
        li_l[draw(st.integers(0, v - 1))] = NEG_INF
        if all(x == NEG_INF for x in li_l):
            li_l[0] = 0.0
    elif mode == "extreme_any":
        lt_l, li_l = draw(logit_vectors(v, "extreme")), draw(logit_vectors(v, "extreme"))
    elif mode == "onehot_target":
        lt_l, li_l = draw(logit_vectors(v, "onehot")), draw(logit_vectors(v))
    elif mode == "onehot_inf":
        lt_l, li_l = draw(logit_vectors(v)), draw(logit_vectors(v, "onehot"))
    else:
        raise ValueError(mode)
    li_l = list(li_l)
    if cover:
        li_l = [
            draw(finite_logit) if (t != NEG_INF and i == NEG_INF) else i
            for t, i in zip(lt_l, li_l, strict=True)
        ]
    if overlap and not any(t != NEG_INF and i != NEG_INF for t, i in zip(lt_l, li_l, strict=True)):
        j = max(range(v), key=lambda k: lt_l[k])
        li_l[j] = 0.0
    return log_softmax(lt_l), log_softmax(li_l)


def special_lams(lt: torch.Tensor, li: torch.Tensor) -> list[float]:
    """1, the largest and smallest ratio (classic RS bound and p_obrs = p_inf threshold), and
    every other breakpoint ``r_x``, restricted to normal float64 values."""
    return [1.0, *sorted({math.exp(x) for x in ref.joint_log_ratios(lt, li) if -690 < x < 690})]


@st.composite
def lams(draw: st.DrawFn, lt: torch.Tensor, li: torch.Tensor) -> float:
    """``lam`` log-uniform on ``[1e-3, 1e3]`` or one of :func:`special_lams`."""
    if draw(st.booleans()):
        return math.exp(draw(st.floats(math.log(1e-3), math.log(1e3))))
    return draw(st.sampled_from(special_lams(lt, li)))


@st.composite
def pair_and_lam(draw: st.DrawFn, **pair_kwargs: bool) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(logp_target, logp_inf, lam)``."""
    lt, li = draw(pairs(**pair_kwargs))
    return lt, li, draw(lams(lt, li))


@st.composite
def budgets(draw: st.DrawFn, lt: torch.Tensor, li: torch.Tensor) -> float:
    """A reachable budget in ``(0, max]``: the maximum, a breakpoint ``Z(r_x)``, or a fraction."""
    top = ref.mp_max_budget(lt, li)
    assume(top > 1e-290)  # a budget must be a positive normal float
    breaks = [
        float(ref.mp_z(lt, li, math.exp(x))) for x in ref.joint_log_ratios(lt, li) if -690 < x < 690
    ]
    choice = draw(st.sampled_from(["max", "break", "fraction", "fraction"]))
    if choice == "max":
        return float(top)
    if choice == "break" and breaks:
        return draw(st.sampled_from(breaks))
    frac = draw(st.one_of(st.floats(1e-4, 1.0), st.sampled_from([0.5, 0.9, 0.95, 0.99])))
    return max(float(top * frac), 1e-300)


seeds = st.integers(0, 2**32 - 1)
