"""Exact references (50-digit mpmath) and derived float tolerances for the verification suite.

Every quantity of the spec is recomputed here from the log-probabilities, independently of
``jackpot``: probabilities are ``exp`` of the float64 log-probs evaluated to 50 digits, so the
reference is exact for the inputs the code under test sees, and every disagreement larger
than the rounding bound below is an error of the code, not of the reference.

Rounding bound (``rel_tol``). The code evaluates ``exp(sum/min/max of log-probs and log lam)``
and ``logsumexp`` over ``V`` entries. One subtraction of numbers of size ``L`` carries an
absolute error ``<= eps * L``, which ``exp`` turns into a relative error; ``logsumexp`` adds
``<= (2 V + 2) eps`` (``V`` rounded ``exp`` terms each ``<= 1`` after the max shift, the sum,
the ``log``) and the final ``exp`` one more ``eps``. Hence the relative error of ``Z``,
``p_obrs``, ``a``, ``w`` is at most ``eps * (3 V + 3 + 2 (L + |log lam|))`` with ``L`` the
largest finite ``|log-prob|`` in play; ``rel_tol`` returns 4 times that (products of two
such quantities, and ``L`` entering through two inputs).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import mpmath
import torch
from mpmath import mp, mpf

mp.dps = 50

EPS64 = torch.finfo(torch.float64).eps
EPS32 = torch.finfo(torch.float32).eps
MP_INF = mpmath.inf
ZERO = mpf(0)
DIVERGENCES = ("kl", "reverse_kl", "tv", "chi2", "hellinger")


def floats(x: torch.Tensor | Sequence[float]) -> list[float]:
    """A 1-D tensor or sequence as Python floats."""
    if isinstance(x, torch.Tensor):
        return [float(v) for v in x.reshape(-1).tolist()]
    return [float(v) for v in x]


def finite_max_abs(*logps: torch.Tensor | Sequence[float]) -> float:
    """Largest ``|x|`` over the finite entries of the given log-prob vectors (0 if none)."""
    vals = [abs(v) for lp in logps for v in floats(lp) if math.isfinite(v)]
    return max(vals, default=0.0)


def rel_tol(*logps: torch.Tensor | Sequence[float], lam: float = 1.0, eps: float = EPS64) -> float:
    """Relative rounding bound of one OBRS quantity (module docstring)."""
    v = max((len(floats(lp)) for lp in logps), default=1)
    big = finite_max_abs(*logps) + abs(math.log(lam))
    return 4.0 * eps * (3 * v + 3 + 2 * big)


def mp_probs(logp: torch.Tensor | Sequence[float], normalize: bool = True) -> list[mpf]:
    """``exp(logp)`` to 50 digits, renormalised to sum to 1 exactly; ``-inf`` -> exactly 0.

    Float log-probs sum to 1 only up to rounding (``|sum - 1| <= V eps`` for a log-softmax);
    the reference uses the distribution they represent, so exact identities (``M <= 1``,
    signs of gaps) hold to 50 digits, and the code's rounding stays inside ``rel_tol``.
    ``normalize=False``: the raw ``exp(logp)``, i.e. exactly the problem the code solves."""
    raw = [ZERO if v == -math.inf else mpmath.exp(mpf(v)) for v in floats(logp)]
    total = mpmath.fsum(raw) if normalize else mpf(1)
    return [x / total for x in raw]


def _mass(logp: torch.Tensor | Sequence[float]) -> mpf:
    return mpmath.fsum(mpmath.exp(mpf(v)) for v in floats(logp) if v != -math.inf)


def mp_ratios(lt: torch.Tensor, li: torch.Tensor, normalize: bool = True) -> list[mpf | None]:
    """``r = p_target / p_inf`` per token: ``None`` where both are 0, ``inf`` where p_inf is."""
    out: list[mpf | None] = []
    # ratio of the renormalised distributions (see mp_probs)
    norm = _mass(li) / _mass(lt) if normalize else mpf(1)
    for t, i in zip(floats(lt), floats(li), strict=True):
        if t == -math.inf and i == -math.inf:
            out.append(None)
        elif i == -math.inf:
            out.append(MP_INF)
        elif t == -math.inf:
            out.append(ZERO)
        else:
            out.append(mpmath.exp(mpf(t) - mpf(i)) * norm)
    return out


def joint_log_ratios(lt: torch.Tensor, li: torch.Tensor) -> list[float]:
    """Finite ``log r`` over the joint support (both log-probs finite)."""
    return [
        t - i
        for t, i in zip(floats(lt), floats(li), strict=True)
        if math.isfinite(t) and math.isfinite(i)
    ]


def mp_z(lt: torch.Tensor, li: torch.Tensor, lam: float | mpf) -> mpf:
    """Exact ``Z(lam) = sum_x min(p_inf, p_target / lam)``."""
    lam = mpf(lam)
    return mpmath.fsum(min(i, t / lam) for t, i in zip(mp_probs(lt), mp_probs(li), strict=True))


def mp_z_sorted(lt: torch.Tensor, li: torch.Tensor, lam: float | mpf) -> mpf:
    """Spec fact 4's form: ``sum_{r >= lam} p_inf + (1/lam) sum_{r < lam} p_target``."""
    lam = mpf(lam)
    pt, pi, r = mp_probs(lt), mp_probs(li), mp_ratios(lt, li)
    above = mpmath.fsum(i for i, rx in zip(pi, r, strict=True) if rx is not None and rx >= lam)
    below = mpmath.fsum(t for t, rx in zip(pt, r, strict=True) if rx is not None and rx < lam)
    return above + below / lam


def mp_obrs(lt: torch.Tensor, li: torch.Tensor, lam: float | mpf) -> list[mpf]:
    """Exact ``p_obrs(x) = min(p_inf, p_target/lam) / Z``."""
    lam = mpf(lam)
    mass = [min(i, t / lam) for t, i in zip(mp_probs(lt), mp_probs(li), strict=True)]
    z = mpmath.fsum(mass)
    return [m / z for m in mass]


def mp_max_budget(lt: torch.Tensor, li: torch.Tensor, normalize: bool = True) -> mpf:
    """The p_inf-mass on the support of p_target."""
    pt, pi = mp_probs(lt, normalize), mp_probs(li, normalize)
    return mpmath.fsum(i for t, i in zip(pt, pi, strict=True) if t > 0)


def mp_solve_lambda(
    lt: torch.Tensor, li: torch.Tensor, budget: float | mpf, normalize: bool = True
) -> mpf:
    """Exact ``lam`` with ``Z(lam) = budget`` (largest such ``lam`` at the maximal budget).

    Independent of the code under test: on each interval between consecutive distinct
    ratios ``Z = P + Q / lam`` with ``P``, ``Q`` recomputed by definition, and the interval
    whose ``lam = Q / (budget - P)`` falls inside it is the answer. ``normalize=False``
    solves the code's own (unrenormalised) problem: where lam is ill-conditioned (fact 5) the
    two can differ by orders of magnitude while both ``Z`` agree to rounding.
    """
    budget = mpf(budget)
    pt, pi, rr = mp_probs(lt, normalize), mp_probs(li, normalize), mp_ratios(lt, li, normalize)
    r = sorted({x for x in rr if x is not None and 0 < x < MP_INF})
    if not r:
        raise ValueError("no joint support")
    top = mp_max_budget(lt, li, normalize)
    if budget >= top:
        return r[0]  # every lam <= r_min reaches the maximal budget; the largest is r_min
    edges = [*r, MP_INF]
    for lo, hi in itertools.pairwise(edges):
        # on [lo, hi): tokens with r >= hi are fully accepted, the rest scaled by 1/lam
        p = mpmath.fsum(i for i, x in zip(pi, rr, strict=True) if x is not None and x >= hi)
        q = mpmath.fsum(t for t, x in zip(pt, rr, strict=True) if x is not None and x < hi)
        if budget > p:
            lam = q / (budget - p)
            if lo <= lam <= hi:
                return lam
    raise AssertionError("unreachable: Z is continuous and covers (0, max budget]")


def divergence(name: str, p: Sequence[mpf], q: Sequence[mpf]) -> mpf:
    """``D(p || q)`` with ``p = p_target``; conventions ``0 log 0 = 0``, ``a/0 = inf``.

    ``kl`` = KL(p||q); ``reverse_kl`` = KL(q||p); ``tv`` = sum |p-q| / 2;
    ``chi2`` (Pearson) = sum (p-q)^2 / q; ``hellinger`` = sum (sqrt p - sqrt q)^2.
    """
    total = ZERO
    for px, qx in zip(p, q, strict=True):
        if name == "kl":
            if px > 0:
                total += MP_INF if qx == 0 else px * mpmath.log(px / qx)
        elif name == "reverse_kl":
            if qx > 0:
                total += MP_INF if px == 0 else qx * mpmath.log(qx / px)
        elif name == "tv":
            total += abs(px - qx) / 2
        elif name == "chi2":
            if qx > 0:
                total += (px - qx) ** 2 / qx
            elif px > 0:
                total += MP_INF
        elif name == "hellinger":
            total += (mpmath.sqrt(px) - mpmath.sqrt(qx)) ** 2
        else:
            raise ValueError(name)
    return total


def divergence_sensitivity(name: str, p: Sequence[mpf], q: Sequence[mpf]) -> mpf:
    """``sum_x |q_x dD/dq_x|`` over ``q_x > 0``: first-order change of D per unit relative
    error of q (so an error ``|dq_x| <= delta q_x`` moves D by at most ``delta`` times this)."""
    total = ZERO
    for px, qx in zip(p, q, strict=True):
        if qx == 0:
            continue  # exact zeros of q (exp(-inf)) carry no rounding error
        if name == "kl":
            total += px
        elif name == "reverse_kl":
            total += MP_INF if px == 0 else abs(qx * (mpmath.log(qx / px) + 1))
        elif name == "tv":
            total += qx / 2
        elif name == "chi2":
            total += abs(px * px - qx * qx) / qx
        elif name == "hellinger":
            total += abs(qx - mpmath.sqrt(px * qx))
        else:
            raise ValueError(name)
    return total


def project_rule(b0: Sequence[float], p_inf: Sequence[mpf], abar: mpf) -> list[mpf]:
    """Map any ``b0`` to a feasible rule ``b in [0,1]^V`` with ``sum p_inf b = abar`` exactly.

    Clip to ``[0, 1]``; if the budget is exceeded scale down (``b * abar / s``), otherwise move
    every entry towards 1 by the same fraction ``theta = (abar - s) / sum p_inf (1 - b)``;
    both stay in ``[0, 1]`` and hit ``abar`` to 50 digits. Needs ``abar <= sum p_inf``.
    """
    b = [min(max(mpf(x), ZERO), mpf(1)) for x in b0]
    s = mpmath.fsum(i * x for i, x in zip(p_inf, b, strict=True))
    if s > abar:
        return [x * abar / s for x in b]
    room = mpmath.fsum(i * (1 - x) for i, x in zip(p_inf, b, strict=True))
    theta = (abar - s) / room if room > 0 else ZERO
    return [x + theta * (1 - x) for x in b]


def rule_distribution(b: Sequence[mpf], p_inf: Sequence[mpf]) -> list[mpf]:
    """``p_inf * b / abar``: the distribution of accepted tokens under rule ``b``."""
    mass = [i * x for i, x in zip(p_inf, b, strict=True)]
    abar = mpmath.fsum(mass)
    return [m / abar for m in mass]


def to_mp(x: torch.Tensor | Sequence[float]) -> list[mpf]:
    """Float entries as exact mpf values (``inf`` kept)."""
    return [MP_INF if v == math.inf else mpf(v) for v in floats(x)]


TINY64 = torch.finfo(torch.float64).tiny


def snap_underflow(src: Sequence[mpf], exact: Sequence[mpf], tiny: float = TINY64) -> list[mpf]:
    """The code's values, except where the exact value is below the smallest normal float:
    there float64 can only hold 0 or a subnormal (absolute error ``<= tiny``, checked here),
    so the exact value is used to evaluate divergences (``log 0`` would be a float artefact)."""
    out = []
    for s, e in zip(src, exact, strict=True):
        if e < tiny:
            assert abs(s - e) <= tiny, (s, e)
            out.append(e)
        else:
            out.append(s)
    return out
