"""verl parity of the policy losses, aggregations, rollout corrections and diagnostics.

Each reference below is written here from the formulas of verl's ``core_algos.py`` and
``rollout_corr_helper.py`` in verl's own form (losses to minimise, ``k1 = -log ratio``, verl's
``lower_upper`` k1 bands), and run on the cases of verl's tests (``test_rollout_corr.py``:
the shapes, the noise scales, the thresholds of every ``rollout_rs`` option, the mask-mode
numbers) with seeded draws in place of their unseeded ones. Conventions that differ are
converted where the call is made (see docs/math.md, "verl conventions").
"""

from __future__ import annotations

import math

import pytest
import torch

import jackpot.functional as F
from jackpot.losses import aggregate, policy_loss
from jackpot.samplers import SamplerInput
from jackpot.samplers.seq_reject import SequenceRejection
from jackpot.samplers.seq_tis import SequenceTIS
from jackpot.samplers.tis import TruncatedIS
from jackpot.samplers.token_reject import TokenRejection

DT = torch.float64
BOUND = 20.0  # verl's SAFETY_BOUND


def verl_case(b: int, t: int, noise: float, seed: int) -> tuple[torch.Tensor, ...]:
    """verl's test inputs: ``old = randn``, ``rollout = old + noise x randn``, full masks."""
    g = torch.Generator().manual_seed(seed)
    old = torch.randn(b, t, generator=g, dtype=DT)
    rollout = old + noise * torch.randn(b, t, generator=g, dtype=DT)
    return old, rollout, torch.ones(b, t, dtype=DT)


def _batch(old: torch.Tensor, rollout: torch.Tensor, mask: torch.Tensor) -> SamplerInput:
    return SamplerInput(rollout, old, old, mask)


# ---------------------------------------------------------------------- references (verl form)


def ref_agg(loss: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """verl ``agg_loss`` (one process, no global batch info)."""
    seq_sum = (loss * mask).sum(-1)
    has = (mask.sum(-1) > 0).to(loss.dtype)
    if mode == "token-mean":
        return (loss * mask).sum() / mask.sum()
    if mode == "seq-mean-token-sum":
        return (seq_sum * has).sum() / has.sum()
    assert mode == "seq-mean-token-mean"
    return (seq_sum / (mask.sum(-1) + 1e-8) * has).sum() / has.sum()


def ref_vanilla(old, new, adv, mask, low, high, c, weights=None, mode="token-mean"):
    """verl's ``vanilla`` PPO loss: clipped ratio, dual-clip ``c`` on negative advantages."""
    ratio = (new - old).clamp(-BOUND, BOUND).exp()
    l1, l2 = -adv * ratio, -adv * ratio.clamp(1 - low, 1 + high)
    clip1 = torch.maximum(l1, l2)
    loss = torch.where(adv < 0, torch.minimum(-adv * c, clip1), clip1)
    return ref_agg(loss if weights is None else loss * weights, mask, mode)


def ref_gspo(old, new, adv, mask, low, high, weights=None):
    """verl's GSPO: always aggregated ``seq-mean-token-mean``."""
    seq = ((new - old) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    log_s = (new - new.detach() + seq.detach()[:, None]).clamp(max=10.0)
    s = log_s.exp()
    loss = torch.maximum(-adv * s, -adv * s.clamp(1 - low, 1 + high))
    return ref_agg(loss if weights is None else loss * weights, mask, "seq-mean-token-mean")


def ref_cispo(old, new, adv, mask, low, high, weights=None, mode="token-mean"):
    ratio = (new - old).clamp(-BOUND, BOUND).exp()
    loss = -ratio.clamp(1 - low, 1 + high).detach() * adv * new
    return ref_agg(loss if weights is None else loss * weights, mask, mode)


def ref_geo_mean(old, new, adv, mask, low, high, weights=None):
    """verl's GMPO: the mean over the batch's sequences, IS weights as their geometric mean."""
    lr = new - old
    sgn = torch.sign(adv)
    pess = sgn * torch.minimum(sgn * lr, sgn * lr.clamp(-low, high))
    n = mask.sum(-1)
    ratio = ((pess * mask).sum(-1) / (n + 1e-8)).exp()
    loss = -(adv * mask).sum(-1) / (n + 1e-8) * ratio
    if weights is not None:
        loss = loss * ((weights + 1e-10).log() * mask).sum(-1).div(n + 1e-8).exp()
    return loss.mean()


def ref_reinforce(new, adv, mask, weights, mode="seq-mean-token-sum"):
    return ref_agg(-adv * new * weights, mask, mode)


def ref_rs_keep(lr: torch.Tensor, mask: torch.Tensor, option: str, threshold: str | float):
    """verl ``rollout_rs`` keep mask of one option, verl's thresholds as verl parses them."""
    lr = lr.clamp(-BOUND, BOUND)
    token = {"k1": -lr, "k2": 0.5 * lr**2, "k3": lr.exp() - 1 - lr}[option[-2:]]
    if option.startswith("token"):
        stat = token
    elif option.startswith("seq_sum"):
        stat = (token * mask).sum(-1, keepdim=True)
    elif option.startswith("seq_mean"):
        stat = (token * mask).sum(-1, keepdim=True) / (mask.sum(-1, keepdim=True) + 1e-8)
    else:
        stat = token.masked_fill(mask == 0, -math.inf).amax(-1, keepdim=True)
    if option.endswith("k1"):
        lower, upper = (float(x) for x in str(threshold).split("_"))
        keep = (stat >= math.log(lower)) & (stat <= math.log(upper))
    else:
        keep = stat <= float(threshold)
    return keep.expand_as(lr).to(lr.dtype) * mask


def jackpot_rs(option: str, threshold: str | float):
    """The jackpot sampler of a verl option; a k1 band ``lower_upper`` becomes the ratio band
    ``[1/upper, 1/lower]`` (verl bounds ``k1 = -log ratio``)."""
    estimator = option[-2:]
    bounds: dict[str, float] = {}
    if estimator == "k1":
        lower, upper = (float(x) for x in str(threshold).split("_"))
        bounds = {"alpha": 1 / upper, "beta": 1 / lower}
    else:
        bounds = {"threshold": float(threshold)}
    if option.startswith("token"):
        return TokenRejection(estimator, **bounds)
    return SequenceRejection(option.split("_")[1], estimator, **bounds)


# --------------------------------------------------------------------------------- losses

SEEDS = range(5)


@pytest.mark.parametrize("seed", SEEDS)
def test_policy_losses_match_verl(seed: int) -> None:
    """verl ``test_basic_rollout_correction``-sized batches (4 x 10, noise 0.1) as (old, new),
    GRPO-like sequence advantages, token IS weights, clip ranges 0.2 / 0.28, c = 3."""
    old, new, mask = verl_case(4, 10, 0.1, seed)
    g = torch.Generator().manual_seed(100 + seed)
    adv = torch.randn(4, 1, generator=g, dtype=DT).expand(4, 10)
    w = (torch.rand(4, 10, generator=g, dtype=DT) + 0.5) * mask
    low, high = 0.2, 0.28

    def ours(kind: str, agg: str, weights=w, logp_old=old):
        return policy_loss(
            new, logp_old, adv, mask, mask, weights, kind=kind, clip_eps=low,
            clip_eps_high=high, agg=agg,
        )[0]  # fmt: skip

    torch.testing.assert_close(
        ours("dual_clip", "token-mean"), ref_vanilla(old, new, adv, mask, low, high, 3.0, w)
    )
    torch.testing.assert_close(
        ours("dual_clip", "seq-mean-token-sum"),
        ref_vanilla(old, new, adv, mask, low, high, 3.0, w, "seq-mean-token-sum"),
    )
    torch.testing.assert_close(
        ours("gspo", "seq-mean-token-mean"), ref_gspo(old, new, adv, mask, low, high, w)
    )
    torch.testing.assert_close(
        ours("cispo", "token-mean"), ref_cispo(old, new, adv, mask, low, high, w)
    )
    torch.testing.assert_close(
        ours("gmpo", "seq-mean-token-mean"), ref_geo_mean(old, new, adv, mask, low, high, w)
    )
    torch.testing.assert_close(
        ours("reinforce", "seq-mean-token-sum"), ref_reinforce(new, adv, mask, w)
    )


@pytest.mark.parametrize("kind", ["dual_clip", "gspo", "cispo", "gmpo", "reinforce"])
def test_policy_loss_gradients_match_verl(kind: str) -> None:
    old, new0, mask = verl_case(3, 7, 0.15, 7)
    mask[2, 5:] = 0  # a shorter response
    adv = torch.tensor([[1.0], [-0.5], [2.0]], dtype=DT).expand(3, 7)
    w = torch.linspace(0.6, 1.4, 21, dtype=DT).reshape(3, 7) * mask
    agg = {"gspo": "seq-mean-token-mean", "gmpo": "seq-mean-token-mean"}.get(kind, "token-mean")
    refs = {
        "dual_clip": lambda n: ref_vanilla(old, n, adv, mask, 0.2, 0.2, 3.0, w),
        "gspo": lambda n: ref_gspo(old, n, adv, mask, 0.2, 0.2, w),
        "cispo": lambda n: ref_cispo(old, n, adv, mask, 0.2, 0.2, w),
        "gmpo": lambda n: ref_geo_mean(old, n, adv, mask, 0.2, 0.2, w),
        "reinforce": lambda n: ref_reinforce(n, adv, mask, w, "token-mean"),
    }
    grads = []
    for fn in (
        lambda n: policy_loss(n, old, adv, mask, mask, w, kind=kind, agg=agg)[0],  # type: ignore[arg-type]
        refs[kind],
    ):
        n = new0.clone().requires_grad_(True)
        fn(n).backward()
        grads.append(n.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_bypass_ppo_clip_is_vanilla_against_the_rollout_log_probs() -> None:
    """verl's bypass ``ppo_clip``: the vanilla loss with old = rollout log-probs, no IS weight;
    here ``dual_clip`` with ``p_inf`` as the old policy (``algo.bypass_old_logprobs``)."""
    _, rollout, mask = verl_case(4, 10, 0.1, 11)
    new = rollout + 0.3 * torch.randn(4, 10, generator=torch.Generator().manual_seed(3), dtype=DT)
    adv = torch.tensor([[1.0], [-1.0], [0.5], [-2.0]], dtype=DT).expand(4, 10)
    ours, _ = policy_loss(new, rollout, adv, mask, mask, None, kind="dual_clip")
    torch.testing.assert_close(ours, ref_vanilla(rollout, new, adv, mask, 0.2, 0.2, 3.0))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_aggregations_match_verl(mode: str) -> None:
    g = torch.Generator().manual_seed(5)
    loss = torch.randn(5, 8, generator=g, dtype=DT)
    mask = (torch.rand(5, 8, generator=g) < 0.7).to(DT)
    mask[3] = 0  # a fully masked sequence: excluded from the sequence means
    torch.testing.assert_close(aggregate(loss, mask, mask, mode), ref_agg(loss, mask, mode))  # type: ignore[arg-type]


# -------------------------------------------------------------------- rollout corrections

RS_OPTIONS = [  # verl test_each_supported_rollout_rs_option
    ("token_k1", "0.5_1.5"),
    ("token_k2", 2.0),
    ("token_k3", 2.0),
    ("seq_sum_k1", "0.6_1.4"),
    ("seq_sum_k2", 2.5),
    ("seq_sum_k3", 2.5),
    ("seq_mean_k1", "0.5_1.5"),
    ("seq_mean_k2", 2.0),
    ("seq_mean_k3", 2.0),
    ("seq_max_k2", 2.0),
    ("seq_max_k3", 2.0),
]


@pytest.mark.parametrize(("option", "threshold"), RS_OPTIONS)
@pytest.mark.parametrize("noise", [0.15, 1.5])
def test_every_rejection_option_matches_verl(option: str, threshold, noise: float) -> None:
    """3 x 7 batches (verl's) at verl's noise 0.15 and at 1.5, where the options do reject."""
    for seed in SEEDS:
        old, rollout, mask = verl_case(3, 7, noise, seed)
        mask[0, 4:] = 0
        want = ref_rs_keep(old - rollout, mask, option, threshold)
        got = jackpot_rs(option, threshold)(_batch(old, rollout, mask)).mask
        assert torch.equal(got, want), (option, seed)


def test_verl_mask_mode_example() -> None:
    """verl ``test_mask_mode``: ratios e^-1 (rejected by token_k1 0.5_2.0) and e^0.5 (kept);
    token IS weights 0.368 and 1.649 (below the threshold 2); half the tokens masked."""
    old = torch.full((2, 5), -2.0, dtype=DT)
    rollout = torch.tensor([[-1.0] * 5, [-2.5] * 5], dtype=DT)
    batch = _batch(old, rollout, torch.ones(2, 5, dtype=DT))
    out = jackpot_rs("token_k1", "0.5_2.0")(batch)
    assert out.mask.tolist() == [[0.0] * 5, [1.0] * 5]
    assert out.metrics["sampler/keep_rate"].item() == 0.5
    w = TruncatedIS(cap=2.0)(batch).weights
    assert w[0, 0].item() == pytest.approx(0.368, abs=0.01)
    assert w[1, 0].item() == pytest.approx(1.649, abs=0.01)


@pytest.mark.parametrize("normalize", [False, True])
def test_is_weights_match_verl(normalize: bool) -> None:
    """verl ``test_basic_rollout_correction``: token weights at threshold 2, sequence weights
    at 5 (noise 0.1 and 0.5), with and without ``rollout_is_batch_normalize``."""
    for seed in SEEDS:
        old, rollout, mask = verl_case(4, 10, 0.1 if seed % 2 else 0.5, seed)
        mask[1, 6:] = 0
        lr = old - rollout
        token = lr.clamp(-BOUND, BOUND).exp().mul(mask).clamp(max=2.0)
        seq_lr = (lr * mask).sum(-1, keepdim=True).clamp(-BOUND, BOUND)
        seq = seq_lr.exp().expand_as(lr).mul(mask).clamp(max=5.0)
        if normalize:
            token = token / ((token * mask).sum() / mask.sum())
            seq_means = (seq * mask).sum(-1) / mask.sum(-1)
            seq = seq / seq_means.mean()
        batch = _batch(old, rollout, mask)
        got_token = TruncatedIS(cap=2.0, normalize=normalize)(batch).weights
        got_seq = SequenceTIS(cap=5.0, normalize=normalize)(batch).weights
        torch.testing.assert_close(got_token, token * mask)
        torch.testing.assert_close(got_seq, seq * mask)


# ---------------------------------------------------------------- estimators and metrics


def test_offpolicy_metrics_match_verl() -> None:
    """verl ``test_offpolicy_metrics``: old = randn - 2, rollout = randn - 1.5, 4 x 12."""
    g = torch.Generator().manual_seed(0)
    old = torch.randn(4, 12, generator=g, dtype=DT) - 2.0
    rollout = torch.randn(4, 12, generator=g, dtype=DT) - 1.5
    mask = torch.ones(4, 12, dtype=DT)
    mean_lp = (old * mask).sum(-1) / mask.sum(-1)
    lr = old - rollout
    want = {
        "mismatch/training_ppl": (-mean_lp).exp().mean(),
        "mismatch/training_log_ppl": (-mean_lp).mean(),
        "mismatch/chi2_token": (lr.clamp(-BOUND, BOUND).exp() ** 2 * mask).sum() / mask.sum() - 1,
        "mismatch/chi2_seq": (2 * (lr * mask).sum(-1).clamp(-BOUND, BOUND)).exp().mean() - 1,
        "mismatch/kl_k1": ((rollout - old) * mask).sum() / mask.sum(),
        "mismatch/kl_k3": ((lr.exp() - lr - 1) * mask).sum() / mask.sum(),
    }
    metrics = TruncatedIS()(_batch(old, rollout, mask)).metrics
    for key, value in want.items():
        torch.testing.assert_close(metrics[key], value, msg=key)


def test_kl_estimators_match_verl_kl_penalty() -> None:
    """verl ``kl_penalty(logprob, ref_logprob, name)``: ``k1``, ``abs``, ``k2``, ``k3`` (whose
    value verl also clamps to +-10, never reached here), and ``k1+`` / ``k3+``, whose gradient
    is k2's."""
    old, ref_lp, _ = verl_case(3, 7, 0.5, 2)
    lr = ref_lp - old
    want = {
        F.kl_k1: old - ref_lp,
        F.kl_abs: (old - ref_lp).abs(),
        F.kl_k2: 0.5 * (old - ref_lp) ** 2,
        F.kl_k3: (lr.clamp(-BOUND, BOUND).exp() - lr - 1).clamp(-10, 10),
    }
    for fn, value in want.items():
        torch.testing.assert_close(fn(old, ref_lp), value)
    for plus, base in ((F.kl_k1_plus, want[F.kl_k1]), (F.kl_k3_plus, want[F.kl_k3])):
        lp = old.clone().requires_grad_(True)
        out = plus(lp, ref_lp)
        torch.testing.assert_close(out, base)
        (grad,) = torch.autograd.grad(out.sum(), lp)
        torch.testing.assert_close(grad, old - ref_lp)
