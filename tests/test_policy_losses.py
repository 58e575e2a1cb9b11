"""verl's policy losses (dual-clip, GSPO, CISPO, GMPO, REINFORCE) and the bypass of the old
log-probs, against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from jackpot.losses import (
    POLICY_LOSSES,
    aggregate,
    cispo_objective,
    dual_clip_surrogate,
    gmpo_surrogate,
    gspo_surrogate,
    policy_loss,
    ppo_surrogate,
    reinforce_objective,
    rollout_model_loss,
)

DT = torch.float64


def _t(rows: list[list[float]], grad: bool = False) -> torch.Tensor:
    return torch.tensor(rows, dtype=DT, requires_grad=grad)


def test_dual_clip_floors_negative_advantages_at_c_times_a() -> None:
    """Ratios 5, 2, 0.5 with A = -1 and 5 with A = +1 (eps 0.2, c 3): PPO gives -5, -2, -0.8,
    1.2; the floor -3 binds only on the first, where the gradient then vanishes."""
    new = _t([[math.log(5.0), math.log(2.0), math.log(0.5), math.log(5.0)]], grad=True)
    adv = _t([[-1.0, -1.0, -1.0, 1.0]])
    obj, clipped = dual_clip_surrogate(new, torch.zeros_like(new), adv, 0.2, None, 3.0)
    torch.testing.assert_close(obj, _t([[-3.0, -2.0, -0.8, 1.2]]))
    assert clipped.tolist() == [[True, False, True, True]]
    obj.sum().backward()
    assert new.grad is not None
    torch.testing.assert_close(new.grad, _t([[0.0, -2.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="clip_ratio_c must be > 1"):
        dual_clip_surrogate(new, new, adv, clip_ratio_c=1.0)


def test_gspo_uses_the_geometric_mean_ratio_of_the_masked_tokens() -> None:
    """Row 0: ratios 1.1 and 1.3, s = sqrt(1.43) < 1.2: unclipped, each token's gradient is s A.
    Row 1: only the first token is in the mask, s = 1.5 > 1.2 is clipped: value 1.2, no gradient.
    """
    new = _t([[math.log(1.1), math.log(1.3)], [math.log(1.5), math.log(9.0)]], grad=True)
    mask = _t([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.ones(2, 2, dtype=DT)
    obj, clipped = gspo_surrogate(new, torch.zeros_like(new), adv, mask, 0.2)
    s = math.sqrt(1.1 * 1.3)
    torch.testing.assert_close(obj[0], _t([[s, s]])[0])
    torch.testing.assert_close(obj[1, 0], torch.tensor(1.2, dtype=DT))
    assert clipped.tolist() == [[False, False], [True, True]]
    (obj * mask).sum().backward()
    assert new.grad is not None
    torch.testing.assert_close(new.grad, _t([[s, s], [0.0, 0.0]]))


def test_gspo_caps_the_log_ratio_at_ten() -> None:
    new = _t([[30.0]])
    obj, _ = gspo_surrogate(new, torch.zeros_like(new), -torch.ones_like(new), torch.ones_like(new))
    assert obj.item() == pytest.approx(-math.exp(10.0))


def test_cispo_weights_log_p_by_the_clipped_ratio_and_keeps_every_gradient() -> None:
    """Ratio 1.5 (weight clipped to 1.2) and 0.9 (unclipped): value w A log p, gradient w A."""
    old = _t([[-1.0, -2.0]])
    new = (old + _t([[math.log(1.5), math.log(0.9)]])).detach().requires_grad_(True)
    adv = _t([[2.0, -1.0]])
    obj, clipped = cispo_objective(new, old, adv, 0.2)
    torch.testing.assert_close(obj, _t([[1.2 * 2.0, 0.9 * -1.0]]) * new.detach())
    assert clipped.tolist() == [[True, False]]
    obj.sum().backward()
    assert new.grad is not None
    torch.testing.assert_close(new.grad, _t([[2.4, -0.9]]))


def test_gmpo_clips_token_log_ratios_on_the_pessimistic_side() -> None:
    """Log-ratios 0.5 and -0.1, clip 0.2: A = +1 takes min(l, clip(l)) = (0.2, -0.1), mean
    0.05; A = -1 takes max = (0.5, -0.1), mean 0.2. Weights (4, 1): geometric mean 2."""
    lr = _t([[0.5, -0.1], [0.5, -0.1]])
    adv = _t([[1.0, 1.0], [-1.0, -1.0]])
    mask = torch.ones(2, 2, dtype=DT)
    obj, clipped = gmpo_surrogate(lr, torch.zeros_like(lr), adv, mask, None, 0.2)
    torch.testing.assert_close(obj[:, 0], _t([[math.exp(0.05), -math.exp(0.2)]])[0])
    torch.testing.assert_close(obj[:, 1], obj[:, 0])
    assert clipped.tolist() == [[True, False], [False, False]]
    weighted, _ = gmpo_surrogate(lr, torch.zeros_like(lr), adv, mask, _t([[4.0, 1.0]] * 2), 0.2)
    torch.testing.assert_close(weighted, 2.0 * obj)
    half, _ = gmpo_surrogate(lr, torch.zeros_like(lr), adv, _t([[1.0, 0.0]] * 2), None, 0.2)
    torch.testing.assert_close(half[:, 0], _t([[math.exp(0.2), -math.exp(0.5)]])[0])


def test_reinforce_is_a_times_log_p_and_never_clipped() -> None:
    new = _t([[-0.5, -2.0]], grad=True)
    obj, clipped = reinforce_objective(new, _t([[1.0, -3.0]]))
    torch.testing.assert_close(obj, _t([[-0.5, 6.0]]))
    assert not clipped.any()


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(4, 6, generator=g, dtype=DT) * 3
    new = old + 0.3 * torch.randn(4, 6, generator=g, dtype=DT)
    adv = torch.randn(4, 1, generator=g, dtype=DT).expand(4, 6).contiguous()
    resp = torch.ones(4, 6, dtype=DT)
    resp[1, 4:] = 0
    accept = resp * (torch.rand(4, 6, generator=g) < 0.7).to(DT)
    weights = accept * (0.5 + torch.rand(4, 6, generator=g, dtype=DT))
    return {"new": new, "old": old, "adv": adv, "resp": resp, "accept": accept, "w": weights}


@pytest.mark.parametrize("kind", [k for k in POLICY_LOSSES if k != "gmpo"])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum"])
def test_obrs_mask_and_weights_multiply_into_every_token_loss(kind: str, agg: str) -> None:
    """The loss is -agg(w x f) over the accepted tokens, whatever ``f`` is; rejected tokens
    carry no gradient."""
    b = _batch()
    new = b["new"].clone().requires_grad_(True)
    loss, stats = policy_loss(
        new, b["old"], b["adv"], b["accept"], b["resp"], b["w"], kind=kind, agg=agg, max_len=6
    )  # type: ignore[arg-type]
    fn = {
        "ppo": lambda: ppo_surrogate(new, b["old"], b["adv"]),
        "dual_clip": lambda: dual_clip_surrogate(new, b["old"], b["adv"]),
        "gspo": lambda: gspo_surrogate(new, b["old"], b["adv"], b["accept"]),
        "cispo": lambda: cispo_objective(new, b["old"], b["adv"]),
        "reinforce": lambda: reinforce_objective(new, b["adv"]),
    }[kind]
    obj, _ = fn()
    want = -aggregate(obj * b["w"], b["accept"], b["resp"], agg, 6)  # type: ignore[arg-type]
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert new.grad is not None
    assert torch.equal(new.grad[b["accept"] == 0], torch.zeros_like(new.grad[b["accept"] == 0]))
    assert 0.0 <= stats["clip_frac"].item() <= 1.0


def test_gmpo_policy_loss_is_the_mean_over_sequences_with_geometric_weights() -> None:
    """verl's GMPO: the mean over sequences of -A exp(mean clipped l) x geomean(w); here with
    seq-mean-token-mean and the accepted mask as both masks (the paper's pairing)."""
    b = _batch(1)
    loss, _ = policy_loss(
        b["new"], b["old"], b["adv"], b["accept"], b["accept"], b["w"], kind="gmpo",
        clip_eps=0.4, agg="seq-mean-token-mean",
    )  # fmt: skip
    per_seq = []
    for i in range(4):
        on = b["accept"][i] != 0
        if not on.any():
            continue
        lr = (b["new"][i] - b["old"][i])[on]
        a = b["adv"][i, 0]
        clip = lr.clamp(-0.4, 0.4)
        pess = torch.minimum(lr, clip) if a > 0 else torch.maximum(lr, clip)
        geo_w = b["w"][i][on].log().mean().exp()
        per_seq.append(-a * pess.mean().exp() * geo_w)
    torch.testing.assert_close(loss, torch.stack(per_seq).mean())


def test_default_ppo_is_bit_identical_to_the_formula() -> None:
    """The default loss is still ``-token-mean(w min(r A, clip(r) A))``, bit for bit."""
    b = _batch(2)
    loss, _ = policy_loss(b["new"], b["old"], b["adv"], b["accept"], b["accept"], b["w"])
    ratio = torch.exp(torch.clamp(b["new"] - b["old"], -20.0, 20.0))
    obj = torch.minimum(ratio * b["adv"], torch.clamp(ratio, 0.8, 1.2) * b["adv"]) * b["w"]
    masked = torch.where(b["accept"] != 0, obj * b["accept"], torch.zeros_like(obj))
    assert torch.equal(loss, -(masked.sum() / b["accept"].sum()))


@pytest.mark.parametrize("kind", POLICY_LOSSES)
def test_rollout_model_loss_takes_the_policy_loss_and_bypass(kind: str) -> None:
    """The rollout model's loss is :func:`policy_loss` of the same kind with the TIS weight;
    with ``bypass`` its old policy is p_inf."""
    b = _batch(3)
    logp_w_old, logp_inf = b["old"], b["old"] + 0.2
    tis = torch.exp(logp_w_old - logp_inf).clamp(max=2.0)
    for bypass, old in ((False, logp_w_old), (True, logp_inf)):
        got, _ = rollout_model_loss(
            b["new"], logp_w_old, logp_inf, b["adv"], b["resp"], kind=kind, bypass=bypass
        )  # type: ignore[arg-type]
        want, _ = policy_loss(b["new"], old, b["adv"], b["resp"], b["resp"], tis, kind=kind)  # type: ignore[arg-type]
        torch.testing.assert_close(got, want)


def test_policy_loss_validation() -> None:
    b = _batch()
    args = (b["new"], b["old"], b["adv"], b["resp"], b["resp"], None)
    with pytest.raises(ValueError, match=r"kind must be one of \['ppo'"):
        policy_loss(*args, kind="foo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clip=False .* for kind 'ppo' only"):
        policy_loss(*args, kind="gspo", clip=False)
