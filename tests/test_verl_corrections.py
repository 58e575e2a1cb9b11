"""verl's rollout corrections and diagnostics: rejection statistics and samplers, sequence
IcePop, IS batch normalisation, the KL estimators ``abs`` / ``k1+`` / ``k3+`` and the off-policy
metrics, against values worked out by hand. New samplers are built from their classes."""

from __future__ import annotations

import math

import pytest
import torch

import jackpot.functional as F
from jackpot.samplers import SamplerInput, SamplerParameterError
from jackpot.samplers.seq_icepop import SequenceIcePop
from jackpot.samplers.seq_reject import SequenceRejection
from jackpot.samplers.seq_tis import SequenceTIS
from jackpot.samplers.tis import TruncatedIS
from jackpot.samplers.token_reject import TokenRejection

DT = torch.float64
L2 = math.log(2.0)
L18 = math.log(1.8)  # away from the edges of the default band [1/2, 2]


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=DT)


def _batch(log_ratios: list[list[float]], mask: list[list[float]] | None = None) -> SamplerInput:
    """p_inf = 0.1 everywhere, p_ref = p_target = p_inf x exp(log ratio)."""
    lr = _t(log_ratios)
    li = torch.full_like(lr, math.log(0.1))
    m = torch.ones_like(lr) if mask is None else _t(mask)
    return SamplerInput(li, li + lr, li + lr, m)


# ---------------------------------------------------------------------------- KL estimators


def test_kl_abs_and_straight_through_variants() -> None:
    """``k1+`` / ``k3+`` have the value of k1 / k3 and the gradient of k2, ``log q - log p``."""
    q = torch.tensor([-1.0, -2.0], dtype=DT, requires_grad=True)
    p = torch.tensor([-1.5, -1.0], dtype=DT)
    torch.testing.assert_close(F.kl_abs(q, p), torch.tensor([0.5, 1.0], dtype=DT))
    for plus, base in ((F.kl_k1_plus, F.kl_k1), (F.kl_k3_plus, F.kl_k3)):
        value = plus(q, p)
        torch.testing.assert_close(value, base(q, p))
        (grad,) = torch.autograd.grad(value.sum(), q)
        torch.testing.assert_close(grad, (q - p).detach())


def test_log_perplexity_per_sequence_ignores_padding() -> None:
    logp = _t([[-1.0, -3.0, float("-inf")], [-0.5, 0.0, 0.0]])
    got = F.log_perplexity(logp, _t([[1, 1, 0], [1, 0, 0]]))
    torch.testing.assert_close(got, torch.tensor([2.0, 0.5], dtype=DT))
    assert F.log_perplexity(logp, torch.zeros(2, 3)).tolist() == [0.0, 0.0]


def test_chi_square_of_token_and_sequence_ratios() -> None:
    """Ratios (2, 1/2) and (2, 1): token E[w^2] - 1 = (4 + 1/4 + 4 + 1)/4 - 1; sequence
    ratios 1 and 2: E[W^2] - 1 = (1 + 4)/2 - 1."""
    b = _batch([[L2, -L2], [L2, 0.0]])
    mask = b.response_mask
    assert F.chi2_token(b.logp_ref, b.logp_inf, mask).item() == pytest.approx(9.25 / 4 - 1)
    assert F.chi2_seq(b.logp_ref, b.logp_inf, mask).item() == pytest.approx(1.5)
    # an empty row is left out of the sequence mean
    empty = _t([[1, 1], [0, 0]])
    assert F.chi2_seq(b.logp_ref, b.logp_inf, empty).item() == pytest.approx(0.0, abs=1e-12)


def test_sampler_reports_the_offpolicy_metrics() -> None:
    b = _batch([[L2, -L2], [L2, 0.0]])
    m = TruncatedIS()(b).metrics
    log_ppl = -b.logp_target.mean(-1)
    assert m["mismatch/training_log_ppl"].item() == pytest.approx(log_ppl.mean().item())
    assert m["mismatch/training_ppl"].item() == pytest.approx(log_ppl.exp().mean().item())
    assert m["mismatch/chi2_token"].item() == pytest.approx(9.25 / 4 - 1)
    assert m["mismatch/chi2_seq"].item() == pytest.approx(1.5)


# ------------------------------------------------------------------------ normalisation


def test_mean_normalize_and_its_degenerate_mean() -> None:
    w, mean = F.mean_normalize(_t([[1.0, 2.0, 3.0]]), _t([[1, 1, 0]]))
    torch.testing.assert_close(w, _t([[2 / 3, 4 / 3, 2.0]]))
    assert mean.item() == 1.5
    zeros = torch.zeros(1, 3, dtype=DT)
    w, mean = F.mean_normalize(zeros, torch.ones(1, 3))
    assert torch.equal(w, zeros) and mean.item() == 0.0


def test_tis_and_seq_tis_batch_normalisation() -> None:
    """Token ratios 2 (capped at 1.5), 1, 1/2 -> mean 1; sequence weights min(2, 1.5) and 1/2
    of the two non-empty rows -> mean 1; the empty row stays out of the mean."""
    b = _batch([[L2, 0.0, -L2], [L2, 0.0, 0.0], [-L2, 0.0, 0.0]], [[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    out = TruncatedIS(cap=1.5, normalize=True)(b)
    mean = (1.5 + 1 + 0.5 + 1.5 + 1) / 5
    torch.testing.assert_close(out.weights[0], _t([[1.5, 1.0, 0.5]])[0] / mean)
    assert out.metrics["weights/batch_norm_factor"].item() == pytest.approx(mean)
    assert out.metrics["weights/mean"].item() == pytest.approx(1.0)
    seq = SequenceTIS(cap=1.5, normalize=True)(b)
    assert seq.weights[0, 0].item() == pytest.approx(1.0 / 1.25)
    assert seq.weights[1, 0].item() == pytest.approx(1.5 / 1.25)
    assert seq.metrics["weights/batch_norm_factor"].item() == pytest.approx(1.25)
    assert "weights/batch_norm_factor" not in SequenceTIS(cap=1.5)(b).metrics
    with pytest.raises(SamplerParameterError, match="normalize=1 is a int"):
        TruncatedIS(normalize=1)  # type: ignore[arg-type]


# ------------------------------------------------------------------- rejection statistics


def test_token_divergence_estimators_and_the_clamp() -> None:
    lr = _t([[L2, 30.0]])
    li = torch.full_like(lr, -40.0)
    k1, k2, k3 = (F.token_divergence(li + lr, li, e) for e in ("k1", "k2", "k3"))
    torch.testing.assert_close(k1, _t([[-L2, -20.0]]))
    torch.testing.assert_close(k2, _t([[L2**2 / 2, 200.0]]))
    torch.testing.assert_close(k3, _t([[1.0 - L2, math.expm1(20.0) - 20.0]]))
    with pytest.raises(ValueError, match="estimator must be one of"):
        F.token_divergence(li, li, "k4")


def test_seq_reduce_reductions_and_empty_rows() -> None:
    v = _t([[1.0, 5.0, float("nan")], [2.0, 0.0, 0.0]])
    mask = _t([[1, 1, 0], [0, 0, 0]])
    assert F.seq_reduce(v, mask, "sum").tolist() == [6.0, 0.0]
    assert F.seq_reduce(v, mask, "mean").tolist() == [3.0, 0.0]
    assert F.seq_reduce(v, mask, "max").tolist() == [5.0, 0.0]
    with pytest.raises(ValueError, match="reduce must be one of"):
        F.seq_reduce(v, mask, "min")


# ---------------------------------------------------------------------------- samplers


def test_token_reject_k1_band_and_k3_threshold() -> None:
    """Ratios 3, 1.8, 1, 1/3: the default k1 band [1/2, 2] keeps 1.8 and 1; k3 <= 0.5 keeps
    1.8 (k3 = 0.212) and 1/3 (0.432) and drops 3 (0.901); k2 <= 0.25 drops 3 and 1/3 (0.603)."""
    b = _batch([[math.log(3.0), L18, 0.0, -math.log(3.0)]])
    out = TokenRejection()(b)
    assert out.mask.tolist() == [[0.0, 1.0, 1.0, 0.0]]
    assert torch.equal(out.weights, out.mask) and torch.equal(out.norm_mask, out.mask)
    assert TokenRejection("k3", threshold=0.5)(b).mask.tolist() == [[0.0, 1.0, 1.0, 1.0]]
    assert TokenRejection("k2", threshold=0.25)(b).mask.tolist() == [[0.0, 1.0, 1.0, 0.0]]


def test_seq_reject_every_reduction() -> None:
    """Row 0: log-ratios (l, l), l = log 1.8: product 3.24, geometric mean 1.8, k3 sum 0.424.
    Row 1: (l, -l): product 1, k3 sum 0.212 + 0.143 = 0.356; both rows: k3 max 0.212."""
    b = _batch([[L18, L18], [L18, -L18]])
    assert SequenceRejection("sum")(b).mask.tolist() == [[0, 0], [1, 1]]  # k1 band on 3.24, 1
    assert SequenceRejection("mean")(b).mask.tolist() == [[1, 1], [1, 1]]  # 1.8 and 1
    assert SequenceRejection("mean", beta=1.5)(b).mask.tolist() == [[0, 0], [1, 1]]
    assert SequenceRejection("sum", "k3", threshold=0.4)(b).mask.tolist() == [[0, 0], [1, 1]]
    assert SequenceRejection("max", "k3", threshold=0.2)(b).mask.tolist() == [[0, 0], [0, 0]]
    assert SequenceRejection("max", "k3", threshold=0.22)(b).mask.tolist() == [[1, 1], [1, 1]]
    assert SequenceRejection("mean", "k2", threshold=0.17)(b).mask.tolist() == [[0, 0], [0, 0]]


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (TokenRejection, {"estimator": "k4"}, r"estimator='k4' is not allowed"),
        (TokenRejection, {"estimator": "k3"}, "needs threshold"),
        (TokenRejection, {"estimator": "k3", "threshold": 1.0, "alpha": 0.5}, "no alpha/beta"),
        (TokenRejection, {"threshold": 1.0}, "not threshold"),
        (TokenRejection, {"alpha": 1.5}, "alpha=1.5 is out of range"),
        (TokenRejection, {"estimator": "k2", "threshold": -1.0}, "threshold=-1.0 is out of range"),
        (SequenceRejection, {"reduce": "max"}, "reduce='max' needs estimator"),
        (SequenceRejection, {"reduce": "min"}, r"reduce='min' is not allowed"),
        (SequenceIcePop, {"alpha": 0.0}, "alpha=0.0 is out of range"),
        (SequenceIcePop, {"alpha": 1.0, "beta": 1.0}, "alpha=1.0 must be < beta=1.0"),
    ],
)
def test_new_sampler_parameters_are_checked(cls, kwargs, match: str) -> None:
    with pytest.raises(SamplerParameterError, match=match):
        cls(**kwargs)


def test_seq_icepop_keeps_sequences_in_the_band_weighted_by_their_ratio() -> None:
    """Products 3.24 (dropped), 1 and 1/1.8 (kept, weighted by them); p_ref = 0 drops its row."""
    b = _batch([[L18, L18], [L18, -L18], [-L18, 0.0], [0.0, 0.0]])
    b.logp_ref[3, 1] = float("-inf")
    out = SequenceIcePop()(b)
    assert out.mask.tolist() == [[0, 0], [1, 1], [1, 1], [0, 0]]
    torch.testing.assert_close(out.weights, _t([[0, 0], [1, 1], [1 / 1.8, 1 / 1.8], [0, 0]]))
    keep = F.seq_icepop_mask(b.logp_ref, b.logp_inf, b.response_mask, 0.5, 2.0)
    assert keep.tolist() == [0.0, 1.0, 1.0, 0.0]
