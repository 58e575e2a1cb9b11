"""Tests of jackpot.losses against independent references (plain loops, numpy, torch's kl_div)."""

from __future__ import annotations

import ast
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from jackpot.losses import (
    aggregate,
    broadcast_to_tokens,
    distill_kl_full,
    distill_kl_topk,
    group_advantages,
    policy_loss,
    ppo_surrogate,
    rollout_model_loss,
)

DT = torch.float64


# ------------------------------------------------------------------------------- references


def ref_advantages(rewards: list[float], groups: list[int], mode: str, eps: float) -> list[float]:
    """Loop over responses; numpy for the group statistics."""
    out = []
    for i, (r, g) in enumerate(zip(rewards, groups, strict=True)):
        members = np.array([rewards[j] for j in range(len(rewards)) if groups[j] == g])
        if len(members) == 1:
            out.append(0.0)
        elif mode == "grpo":
            out.append((r - members.mean()) / (members.std(ddof=1) + eps))
        elif mode == "drgrpo":
            out.append(r - members.mean())
        else:
            others = [rewards[j] for j in range(len(rewards)) if groups[j] == g and j != i]
            out.append(r - float(np.mean(others)))
    return out


def ref_aggregate(v: np.ndarray, lm: np.ndarray, nm: np.ndarray, mode: str, max_len: int) -> float:
    """Loops over sequences and tokens."""
    b, t = v.shape
    if mode == "token-mean":
        num = sum(v[i, j] for i in range(b) for j in range(t) if lm[i, j])
        den = nm.sum()
        return num / den if den > 0 else 0.0
    if mode == "token-sum":
        return float(sum(v[i, j] for i in range(b) for j in range(t) if lm[i, j]))
    if mode == "seq-mean-token-sum":
        seq = [sum(v[i, j] for j in range(t) if lm[i, j]) for i in range(b) if nm[i].sum() > 0]
        return float(np.mean(seq)) if seq else 0.0
    if mode == "seq-mean-token-mean":
        seq = [
            sum(v[i, j] for j in range(t) if lm[i, j]) / nm[i].sum()
            for i in range(b)
            if nm[i].sum() > 0
        ]
        return float(np.mean(seq)) if seq else 0.0
    return float(np.mean([sum(v[i, j] for j in range(t) if lm[i, j]) / max_len for i in range(b)]))


# ------------------------------------------------------------------------------- advantages


@pytest.mark.parametrize("mode", ["grpo", "drgrpo", "rloo"])
def test_advantages_ragged_groups_match_reference(mode: str) -> None:
    rewards = [1.0, 0.0, 0.5, 2.0, -1.0, 3.0, 0.25, 0.25, 1.0, 7.0]
    groups = [5, 5, 5, -2, -2, 9, 100, 100, 100, 100]  # sizes 3, 2, 1, 4; ids not contiguous
    got = group_advantages(torch.tensor(rewards), torch.tensor(groups), mode, eps=1e-6)
    want = ref_advantages(rewards, groups, mode, eps=1e-6)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert got[5] == 0.0  # the size-1 group


def test_grpo_matches_verl_formula_with_unbiased_std() -> None:
    r = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0], dtype=DT)
    got = group_advantages(r, torch.zeros(5, dtype=torch.long), "grpo", eps=1e-6)
    torch.testing.assert_close(got, (r - r.mean()) / (r.std(unbiased=True) + 1e-6))


def test_rloo_is_verl_scaled_mean_baseline() -> None:
    r = torch.tensor([0.3, 1.0, 0.0, 0.7], dtype=DT)
    got = group_advantages(r, torch.zeros(4, dtype=torch.long), "rloo")
    torch.testing.assert_close(got, 4 / 3 * (r - r.mean()))


@pytest.mark.parametrize("mode", ["grpo", "drgrpo", "rloo"])
def test_equal_rewards_and_singletons_give_exact_zero(mode: str) -> None:
    rewards = torch.tensor([0.1] * 7 + [0.3] * 3 + [5.0], dtype=torch.float32)
    groups = torch.tensor([0] * 7 + [1] * 3 + [2])
    adv = group_advantages(rewards, groups, mode)
    assert torch.equal(adv, torch.zeros_like(adv))


def test_advantages_dtype_no_grad_and_empty() -> None:
    adv = group_advantages(torch.tensor([1, 0, 1]), torch.tensor([0, 0, 0]), "drgrpo")
    assert adv.dtype == torch.get_default_dtype()
    r = torch.tensor([1.0, 0.0], requires_grad=True)
    assert not group_advantages(r, torch.tensor([0, 0])).requires_grad
    empty = group_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0,)


@settings(max_examples=40, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 4), st.floats(-10, 10, allow_nan=False)), min_size=1, max_size=20
    ),
    mode=st.sampled_from(["grpo", "drgrpo", "rloo"]),
)
def test_advantages_property_matches_reference(data: list[tuple[int, float]], mode: str) -> None:
    groups, rewards = [g for g, _ in data], [r for _, r in data]
    got = group_advantages(torch.tensor(rewards, dtype=DT), torch.tensor(groups), mode, eps=1e-3)
    want = ref_advantages(rewards, groups, mode, eps=1e-3)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-7, atol=1e-7)


def test_advantages_validation() -> None:
    r, g = torch.zeros(3), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"mode must be one of \['grpo', 'drgrpo', 'rloo'\]"):
        group_advantages(r, g, "ppo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps must be > 0, got 0"):
        group_advantages(r, g, eps=0.0)
    with pytest.raises(ValueError, match="integer"):
        group_advantages(r, g.float())
    with pytest.raises(ValueError, match=r"\(N,\)"):
        group_advantages(r, g[:2])


def test_broadcast_to_tokens() -> None:
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    got = broadcast_to_tokens(torch.tensor([2.0, -1.0]), mask)
    torch.testing.assert_close(got, torch.tensor([[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        broadcast_to_tokens(torch.tensor([1.0]), mask)


# ------------------------------------------------------------------------------- aggregation

MODES = [
    "token-mean",
    "token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", range(4))
def test_aggregate_matches_loop_reference(mode: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(5, 7, generator=gen, dtype=DT)
    nm = (torch.rand(5, 7, generator=gen) < 0.7).to(DT)
    nm[2] = 0.0  # one empty sequence
    lm = nm * (torch.rand(5, 7, generator=gen) < 0.6).to(DT)  # loss_mask inside norm_mask
    got = aggregate(v, lm, nm, mode, max_len=9)  # type: ignore[arg-type]
    want = ref_aggregate(v.numpy(), lm.numpy(), nm.numpy(), mode, 9)
    assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", [0, 3])
def test_aggregate_empty_denominator_is_zero_with_grad(mode: str, batch: int) -> None:
    v = torch.randn(batch, 4, dtype=DT, requires_grad=True)
    zero = torch.zeros(batch, 4, dtype=DT)
    out = aggregate(v, zero, zero, mode, max_len=4)  # type: ignore[arg-type]
    assert out.item() == 0.0 and out.grad_fn is not None
    out.backward()
    assert v.grad is not None and torch.equal(v.grad, torch.zeros_like(v))


@pytest.mark.parametrize("mode", MODES)
def test_aggregate_ignores_nonfinite_values_outside_loss_mask(mode: str) -> None:
    v = torch.tensor([[1.0, float("inf")], [float("nan"), 3.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = aggregate(v, mask, mask, mode, max_len=2)  # type: ignore[arg-type]
    want = {"token-sum": 4.0, "seq-mean-token-sum-norm": 1.0}.get(mode, 2.0)
    assert out.item() == pytest.approx(want)
    out.backward()
    assert v.grad is not None and torch.isfinite(v.grad).all()


def test_aggregate_validation() -> None:
    v = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"mode must be one of \['token-mean'"):
        aggregate(v, v, v, "sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_len must be a positive int"):
        aggregate(v, v, v, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match=r"max_len must be a positive int.*got 0"):
        aggregate(v, v, v, "seq-mean-token-sum-norm", max_len=0)
    with pytest.raises(ValueError, match="shapes must match"):
        aggregate(v, v, torch.zeros(2, 4))


# ---------------------------------------------------- OBRS weights vs denominators (enumeration)

P_INF = np.array([0.5, 0.3, 0.15, 0.05])
P_TARGET = np.array([0.2, 0.2, 0.35, 0.25])
F_VALUES = np.array([1.0, -2.0, 0.5, 3.0])
LAM = 1.3


def _obrs_quantities() -> tuple[np.ndarray, np.ndarray, float]:
    """Acceptance, ratio and Z written from the spec, independent of jackpot.functional."""
    accept = np.minimum(1.0, P_TARGET / (LAM * P_INF))
    ratio = P_TARGET / P_INF
    z = float(np.minimum(P_INF, P_TARGET / LAM).sum())
    return accept, ratio, z


@pytest.mark.parametrize("n_pos", [1, 2])
def test_proposal_and_accepted_denominators_are_both_unbiased(n_pos: int) -> None:
    """n_pos i.i.d. positions of one sequence, every (token, accept) outcome enumerated.

    "proposal": weights max(lam, r), norm_mask = response mask -> E = E_target[f] exactly.
    "accepted": weights Z * max(lam, r), norm_mask = accepted mask -> E[. | any accepted]
    = E_target[f]. Swapping the weights is off by the factor Z.
    """
    accept, ratio, z = _obrs_quantities()
    target_mean = float((P_TARGET * F_VALUES).sum())
    outcomes = list(itertools.product(range(len(P_INF)), (0, 1)))
    e_prop = e_acc = e_swapped = p_any = 0.0
    for combo in itertools.product(outcomes, repeat=n_pos):
        prob = math.prod(P_INF[x] * (accept[x] if m else 1 - accept[x]) for x, m in combo)
        xs = [x for x, _ in combo]
        m = torch.tensor([[float(mm) for _, mm in combo]], dtype=DT)
        f = torch.tensor(F_VALUES[None, xs], dtype=DT)
        w_prop = torch.tensor(np.maximum(LAM, ratio[None, xs]), dtype=DT)
        e_prop += prob * aggregate(w_prop * f, m, torch.ones_like(m)).item()
        e_swapped += prob * aggregate(z * w_prop * f, m, torch.ones_like(m)).item()
        if m.sum() > 0:
            p_any += prob
            e_acc += prob * aggregate(z * w_prop * f, m, m).item()
    assert e_prop == pytest.approx(target_mean, rel=1e-12)
    assert e_acc / p_any == pytest.approx(target_mean, rel=1e-12)
    assert e_swapped == pytest.approx(z * target_mean, rel=1e-12)
    assert p_any == pytest.approx(1 - (1 - z) ** n_pos, rel=1e-12)  # Z = acceptance rate


# ---------------------------------------------------------------------------------------- PPO


def test_ppo_surrogate_clipping_branches_by_hand() -> None:
    ratio = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1, 1.5])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0, 0.0])
    obj, clipped = ppo_surrogate(ratio.log(), torch.zeros(6), adv, clip_eps=0.2)
    torch.testing.assert_close(obj, torch.tensor([1.2, -1.5, 0.5, -0.8, 2.2, 0.0]))
    assert clipped.tolist() == [True, False, False, True, False, False]


def test_ppo_surrogate_asymmetric_clip_and_gradients() -> None:
    logp_new = torch.tensor([math.log(1.25), math.log(1.25)], requires_grad=True)
    adv = torch.tensor([1.0, 1.0])
    obj, clipped = ppo_surrogate(logp_new, torch.zeros(2), adv, clip_eps=0.2, clip_eps_high=0.28)
    torch.testing.assert_close(obj, torch.tensor([1.25, 1.25]))  # inside [0.8, 1.28]
    assert not clipped.any()
    obj2, clipped2 = ppo_surrogate(logp_new, torch.zeros(2), adv, clip_eps=0.2)
    assert clipped2.all()
    obj2.sum().backward()
    assert logp_new.grad is not None and torch.equal(logp_new.grad, torch.zeros(2))


def test_ppo_no_clip_is_ratio_times_advantage_and_ratio_clamped() -> None:
    gen = torch.Generator().manual_seed(0)
    logp_new, logp_old = torch.randn(3, 5, generator=gen), torch.randn(3, 5, generator=gen)
    adv = torch.randn(3, 5, generator=gen)
    obj, clipped = ppo_surrogate(logp_new, logp_old, adv, clip=False)
    torch.testing.assert_close(obj, (logp_new - logp_old).exp() * adv)
    assert not clipped.any()
    big, _ = ppo_surrogate(
        torch.tensor([[50.0]]), torch.tensor([[0.0]]), torch.ones(1, 1), clip=False
    )
    torch.testing.assert_close(big, torch.tensor([[math.exp(20.0)]]))


def test_ppo_validation() -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=r"clip_eps must be in \(0, 1\), got 1.5"):
        ppo_surrogate(x, x, x, clip_eps=1.5)
    with pytest.raises(ValueError, match="clip_eps_high must be > 0"):
        ppo_surrogate(x, x, x, clip_eps_high=-0.1)
    with pytest.raises(ValueError, match="shapes must match"):
        ppo_surrogate(x, x, torch.zeros(2))


def _policy_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    resp = torch.ones(3, 6, dtype=DT)
    resp[1, 4:] = 0.0
    accepted = (torch.rand(3, 6, generator=gen) < 0.7).to(DT) * resp
    return {
        "logp_new": (0.3 * torch.randn(3, 6, generator=gen, dtype=DT)).requires_grad_(),
        "logp_old": 0.3 * torch.randn(3, 6, generator=gen, dtype=DT),
        "adv": torch.randn(3, 6, generator=gen, dtype=DT),
        "weights": (torch.rand(3, 6, generator=gen, dtype=DT) + 0.5).requires_grad_(),
        "resp": resp,
        "accepted": accepted,
    }


def test_policy_loss_matches_reference_and_detaches_weights() -> None:
    b = _policy_batch()
    loss, stats = policy_loss(
        b["logp_new"], b["logp_old"], b["adv"], b["accepted"], b["resp"], b["weights"]
    )
    ratio = (b["logp_new"] - b["logp_old"]).exp()
    obj = torch.minimum(ratio * b["adv"], ratio.clamp(0.8, 1.2) * b["adv"])
    want = -(b["accepted"] * b["weights"].detach() * obj).sum() / b["resp"].sum()
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert b["weights"].grad is None  # rho is a constant of the loss
    assert b["logp_new"].grad is not None
    # stats over loss_mask tokens
    m = b["accepted"].bool()
    with torch.no_grad():
        clipped = (ratio.clamp(0.8, 1.2) * b["adv"] < ratio * b["adv"])[m]
        log_r = (b["logp_new"] - b["logp_old"])[m]
        k3 = (log_r.exp() - 1 - log_r).mean()
    assert stats["clip_frac"].item() == pytest.approx(clipped.double().mean().item())
    assert stats["approx_kl"].item() == pytest.approx(k3.item())
    assert all(not s.requires_grad for s in stats.values())


def test_policy_loss_weights_none_and_empty_mask() -> None:
    b = _policy_batch(1)
    ones = torch.ones_like(b["resp"])
    a, _ = policy_loss(b["logp_new"], b["logp_old"], b["adv"], b["resp"], b["resp"], None)
    c, _ = policy_loss(b["logp_new"], b["logp_old"], b["adv"], b["resp"], b["resp"], ones)
    torch.testing.assert_close(a, c)
    zero = torch.zeros_like(b["resp"])
    loss, stats = policy_loss(b["logp_new"], b["logp_old"], b["adv"], zero, zero, b["weights"])
    assert loss.item() == 0.0 and stats["clip_frac"].item() == 0.0
    assert stats["approx_kl"].item() == 0.0
    loss.backward()
    assert b["logp_new"].grad is not None and torch.equal(
        b["logp_new"].grad, torch.zeros_like(b["logp_new"])
    )


def test_rollout_model_loss_truncated_is() -> None:
    logp_inf = torch.zeros(1, 3, dtype=DT)
    logp_w_old = torch.tensor([[math.log(5.0), math.log(0.5), math.log(1.5)]], dtype=DT)
    logp_w = (logp_w_old + 0.05).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, 2.0]], dtype=DT)
    resp = torch.ones(1, 3, dtype=DT)
    loss, stats = rollout_model_loss(logp_w, logp_w_old, logp_inf, adv, resp, tis_cap=2.0)
    tis = torch.tensor([[2.0, 0.5, 1.5]], dtype=DT)  # min(p_w_old / p_inf, 2)
    want = -(tis * math.exp(0.05) * adv).mean()  # ratio e^0.05 is inside the clip range
    torch.testing.assert_close(loss, want)
    assert stats["tis_capped_frac"].item() == pytest.approx(1 / 3)
    assert stats["tis_mean"].item() == pytest.approx(4.0 / 3)
    with pytest.raises(ValueError, match="tis_cap must be > 0, got 0"):
        rollout_model_loss(logp_w, logp_w_old, logp_inf, adv, resp, tis_cap=0.0)


# ------------------------------------------------------------------------------ distillation


def _logits(seed: int, b: int = 2, t: int = 5, v: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    teacher = 2 * torch.randn(b, t, v, generator=gen, dtype=DT)
    student = 2 * torch.randn(b, t, v, generator=gen, dtype=DT)
    return teacher, student


def _mask(b: int = 2, t: int = 5) -> torch.Tensor:
    mask = torch.ones(b, t, dtype=DT)
    mask[0, 3:] = 0.0
    return mask


def _kl_div_reference(teacher: torch.Tensor, student: torch.Tensor, direction: str) -> torch.Tensor:
    """Per-token KL ``(B, T)`` with torch's kl_div: kl_div(input=log q, target=log p) = KL(p||q)."""
    logp, logq = teacher.detach().log_softmax(-1), student.log_softmax(-1)
    if direction == "forward":
        return F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1)
    return F.kl_div(logp, logq, log_target=True, reduction="none").sum(-1)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_distill_kl_full_matches_kl_div_values_and_grads(direction: str, chunk_size: int) -> None:
    teacher, student = _logits(0)
    teacher.requires_grad_()
    student.requires_grad_()
    mask = _mask()
    got = distill_kl_full(teacher, student, mask, direction, chunk_size=chunk_size)  # type: ignore[arg-type]
    ref_student = student.detach().clone().requires_grad_()
    want = (_kl_div_reference(teacher, ref_student, direction) * mask).sum() / mask.sum()
    torch.testing.assert_close(got, want)
    got.backward()
    want.backward()
    assert teacher.grad is None  # SG(p_new)
    assert student.grad is not None and ref_student.grad is not None
    torch.testing.assert_close(student.grad, ref_student.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_distill_kl_full_chunked_equals_unchunked(direction: str) -> None:
    teacher, student = _logits(1, b=3, t=4, v=7)
    teacher, student = teacher.float(), student.float()
    mask = _mask(3, 4)
    grads, values = [], []
    for chunk_size in (1, 5, 12, 100):
        s = student.clone().requires_grad_()
        out = distill_kl_full(
            teacher, s, mask, direction, "seq-mean-token-mean", chunk_size=chunk_size
        )  # type: ignore[arg-type]
        out.backward()
        values.append(out.detach())
        grads.append(s.grad)
    for value, grad in zip(values[1:], grads[1:], strict=True):
        torch.testing.assert_close(value, values[0])
        torch.testing.assert_close(grad, grads[0])


def test_distill_kl_zero_mass_teacher_tokens_and_no_grad_mode() -> None:
    teacher, student = _logits(2)
    teacher[..., :3] = float("-inf")  # e.g. tokens a top-p teacher cannot emit
    student.requires_grad_()
    out = distill_kl_full(teacher, student, _mask(), "forward", chunk_size=4)
    assert torch.isfinite(out)
    out.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    rev = distill_kl_full(teacher, student.detach(), _mask(), "reverse")
    assert rev.item() == math.inf  # the student puts mass where the teacher has none
    with torch.no_grad():
        plain = distill_kl_full(teacher, student, _mask(), "forward")
    torch.testing.assert_close(plain, out.detach())


def test_distill_kl_full_bf16_student() -> None:
    teacher, student = _logits(3)
    s16 = student.bfloat16().requires_grad_()
    out = distill_kl_full(teacher.bfloat16(), s16, _mask(), "forward", chunk_size=3)
    want = distill_kl_full(teacher.bfloat16().double(), s16.detach().double(), _mask())
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(want.item(), rel=1e-5)
    out.backward()
    assert s16.grad is not None and s16.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("sparse", [False, True])
def test_distill_kl_holds_no_vocab_sized_activations_for_backward(sparse: bool) -> None:
    """Between forward and backward only views of the inputs are kept (chunks are recomputed)."""
    b, t, v, chunk = 2, 64, 2048, 16
    gen = torch.Generator().manual_seed(7)
    teacher, student = torch.randn(b, t, v, generator=gen), torch.randn(b, t, v, generator=gen)
    student.requires_grad_()
    ids, logp = _topk_inputs(teacher, 4)
    storages: dict[int, int] = {}

    def pack(x: torch.Tensor) -> torch.Tensor:
        storages[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        if sparse:
            out = distill_kl_topk(ids, logp, student, torch.ones(b, t), chunk_size=chunk)
        else:
            out = distill_kl_full(teacher, student, torch.ones(b, t), chunk_size=chunk)
    inputs = {x.untyped_storage().data_ptr() for x in (teacher, student, ids, logp)}
    extra = sum(n for ptr, n in storages.items() if ptr not in inputs)
    assert extra < chunk * v * 4  # less than one fp32 chunk, let alone (B, T, V)
    out.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


def _topk_inputs(teacher: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    logp = teacher.log_softmax(-1)
    top = logp.topk(k, dim=-1)
    return top.indices, top.values


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_distill_kl_topk_equals_full_when_k_is_vocab(direction: str) -> None:
    teacher, student = _logits(4)
    ids, logp = _topk_inputs(teacher, teacher.shape[-1])
    s_full, s_topk = student.clone().requires_grad_(), student.clone().requires_grad_()
    full = distill_kl_full(teacher, s_full, _mask(), direction)  # type: ignore[arg-type]
    sparse = distill_kl_topk(ids, logp, s_topk, _mask(), direction, chunk_size=3)  # type: ignore[arg-type]
    torch.testing.assert_close(sparse, full)
    full.backward()
    sparse.backward()
    assert s_full.grad is not None and s_topk.grad is not None
    torch.testing.assert_close(s_topk.grad, s_full.grad)


def _lumped_reference(teacher: np.ndarray, student: np.ndarray, k: int, direction: str) -> float:
    """Per-position loop: KL between the (k + 1)-bucket coarsenings of p and q."""
    total = 0.0
    for p_logits, q_logits in zip(
        teacher.reshape(-1, teacher.shape[-1]), student.reshape(-1, student.shape[-1]), strict=True
    ):
        p = np.exp(p_logits - p_logits.max())
        p /= p.sum()
        q = np.exp(q_logits - q_logits.max())
        q /= q.sum()
        top = np.argsort(-p)[:k]
        rest = np.setdiff1d(np.arange(len(p)), top)
        pb = np.append(p[top], p[rest].sum())
        qb = np.append(q[top], q[rest].sum())
        a, b = (pb, qb) if direction == "forward" else (qb, pb)
        total += float((a * np.log(a / b)).sum())
    return total


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("k", [1, 4])
def test_distill_kl_topk_lumped_reference_and_lower_bound(direction: str, k: int) -> None:
    teacher, student = _logits(5)
    ids, logp = _topk_inputs(teacher, k)
    mask = torch.ones(2, 5, dtype=DT)
    got = distill_kl_topk(ids, logp, student, mask, direction)  # type: ignore[arg-type]
    want = _lumped_reference(teacher.numpy(), student.numpy(), k, direction) / 10
    assert got.item() == pytest.approx(want, rel=1e-5)
    full = distill_kl_full(teacher, student, mask, direction)  # type: ignore[arg-type]
    assert got.item() <= full.item() + 1e-6  # coarsening never increases a KL


def test_distill_kl_topk_chunked_equals_unchunked_and_validation() -> None:
    teacher, student = _logits(6)
    ids, logp = _topk_inputs(teacher, 3)
    grads = []
    for chunk_size in (2, 1000):
        s = student.clone().requires_grad_()
        distill_kl_topk(ids, logp, s, _mask(), "reverse", chunk_size=chunk_size).backward()
        grads.append(s.grad)
    torch.testing.assert_close(grads[0], grads[1])
    with pytest.raises(ValueError, match=r"direction must be one of \['forward', 'reverse'\]"):
        distill_kl_topk(ids, logp, student, _mask(), "both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size must be > 0, got 0"):
        distill_kl_full(teacher, student, _mask(), chunk_size=0)
    with pytest.raises(ValueError, match="shapes must match"):
        distill_kl_full(teacher, student[..., :5], _mask())


def test_losses_imports_torch_and_stdlib_only() -> None:
    """Static check (a subprocess import would cost seconds): no Lightning/transformers; the
    pure functions of jackpot.functional are the one project import."""
    import jackpot.losses

    tree = ast.parse(Path(jackpot.losses.__file__).read_text())
    roots = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
        if not isinstance(node, ast.ImportFrom) or node.module
    }
    assert roots <= {"__future__", "collections", "typing", "torch", "jackpot"}, roots
    assert all(
        node.module.startswith("jackpot.functional")
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jackpot")
    )
