"""The RL iteration's tensor plumbing on hand-made tensors: edge cases without a Trainer."""

from __future__ import annotations

import pytest
import torch

import jackpot.functional as F
from jackpot.losses import POLICY_LOSSES, policy_loss
from jackpot.samplers import get_sampler
from jackpot.samplers.base import SamplerInput, SamplerOutput
from jackpot.step import (
    TargetScores,
    auto_micro_batch_size,
    candidate_set,
    joint_loss,
    micro_batches,
    minibatch_denominators,
    minibatch_indices,
    prompt_indices,
    run_sampler,
    seeded_generator,
    step_tensors,
    target_scores,
)

N, T, V = 8, 5, 11


def _tensors(rewards: torch.Tensor, mask: torch.Tensor | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits_inf = torch.randn(N, T, V, generator=g)
    logits_ref = logits_inf + 0.5 * torch.randn(N, T, V, generator=g)
    ids = torch.multinomial(logits_inf.softmax(-1).reshape(-1, V), 1, generator=g).reshape(N, T)
    mask = torch.ones(N, T) if mask is None else mask
    t = step_tensors(
        ids,
        mask,
        rewards,
        torch.arange(N) // 4,
        F.token_logprobs(logits_inf, ids),
        F.token_logprobs(logits_ref, ids),
        None,
        "grpo",
    )
    return t, logits_inf, logits_ref


def _loss(t, logits_new, sampled, logits_w=None, **options):
    """:func:`joint_loss` over every row with this file's usual settings; ``options`` override."""
    settings = {
        "distill_coef": 0.5,
        "distill_direction": "forward",
        "clip_eps": 0.2,
        "clip": True,
        "agg": "token-mean",
        "rollout_tis_cap": 2.0,
        "max_len": T,
        **options,
    }
    return joint_loss(t, torch.arange(N), logits_new, sampled, logits_w=logits_w, **settings)


def test_every_token_rejected_gives_a_zero_finite_loss_and_zero_gradient() -> None:
    t, _, logits_ref = _tensors(torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 0]))
    logits_new = logits_ref.clone().requires_grad_(True)
    zero = torch.zeros(N, T)
    loss = _loss(t, logits_new, SamplerOutput(zero, zero, zero))
    loss.total.backward()
    assert loss.total.item() == 0.0
    assert logits_new.grad is not None and torch.count_nonzero(logits_new.grad) == 0


def test_equal_rewards_in_every_group_give_no_policy_gradient() -> None:
    t, _, logits_ref = _tensors(torch.ones(N))
    assert torch.count_nonzero(t.advantages) == 0
    logits_new = logits_ref.clone().requires_grad_(True)
    ones = torch.ones(N, T)
    _loss(t, logits_new, SamplerOutput(ones, ones, ones)).total.backward()
    assert torch.count_nonzero(logits_new.grad) == 0


def test_empty_responses_are_finite_everywhere() -> None:
    mask = torch.ones(N, T)
    mask[:3] = 0  # three empty responses
    t, logits_inf, logits_ref = _tensors(torch.arange(N).float(), mask)
    out = run_sampler(
        get_sampler("obrs", budget=0.9),
        t,
        torch.arange(N),
        TargetScores(t.logp_ref, logits=logits_ref),
        torch.Generator().manual_seed(0),
        logits_inf.log_softmax(-1),
    )
    assert torch.all(out.mask[:3] == 0)
    logits_new = logits_ref.clone().requires_grad_(True)
    loss = _loss(t, logits_new, out)
    loss.total.backward()
    assert torch.isfinite(loss.total) and torch.isfinite(logits_new.grad).all()
    assert torch.count_nonzero(logits_new.grad[:3]) == 0


def test_group_smaller_than_g_and_singletons_get_zero_advantage() -> None:
    g = torch.tensor([0, 0, 0, 1])  # a group of 3 and a group of 1
    t = step_tensors(
        torch.zeros(4, 2, dtype=torch.long),
        torch.ones(4, 2),
        torch.tensor([1.0, 0.0, 0.0, 1.0]),
        g,
        torch.zeros(4, 2),
        torch.zeros(4, 2),
        None,
        "grpo",
    )
    assert torch.all(t.advantages[3] == 0)
    assert t.advantages[0, 0] > 0 > t.advantages[1, 0]


def test_minibatches_partition_the_rows_and_prompts_are_disjoint_across_ranks() -> None:
    parts = minibatch_indices(10, 3, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(parts).tolist()) == list(range(10))
    r0 = prompt_indices(100, step=3, per_rank=8, seed=1, rank=0, world=2)
    r1 = prompt_indices(100, step=3, per_rank=8, seed=1, rank=1, world=2)
    assert not set(r0) & set(r1) and len(r0) == len(r1) == 8
    assert r0 == prompt_indices(100, step=3, per_rank=8, seed=1, rank=0, world=2)
    assert r0 != prompt_indices(100, step=4, per_rank=8, seed=1, rank=0, world=2)
    a = torch.rand(3, generator=seeded_generator(0, 5, 0, 1))
    assert torch.equal(a, torch.rand(3, generator=seeded_generator(0, 5, 0, 1)))
    assert not torch.equal(a, torch.rand(3, generator=seeded_generator(0, 5, 0, 2)))


def test_candidate_set_marks_unknown_p_inf_and_bounds_z() -> None:
    _, logits_inf, logits_ref = _tensors(torch.zeros(N))
    ids_inf, logp_inf = F.topk_logprobs(logits_inf, 3)
    ids, cand_inf, cand_tgt = candidate_set(ids_inf, logp_inf, logits_ref, 3)
    assert ids.shape == (N, T, 6)
    assert torch.all(cand_inf[..., 3:] == float("-inf"))
    torch.testing.assert_close(cand_tgt, logits_ref.log_softmax(-1).gather(-1, ids))
    z_approx = F.sparse_topk_normalizer(ids, cand_tgt, cand_inf, 1.0)
    z = F.normalizer(logits_ref.log_softmax(-1), logits_inf.log_softmax(-1), 1.0)
    assert torch.all(z_approx <= z + 1e-6)


def test_sampler_needing_full_p_inf_without_it_is_a_clear_error() -> None:
    t, _, logits_ref = _tensors(torch.zeros(N))
    with pytest.raises(ValueError, match="needs the full p_inf"):
        run_sampler(
            get_sampler("rs"),
            t,
            torch.arange(N),
            TargetScores(t.logp_ref, logits=logits_ref),
            torch.Generator(),
        )


def _grads_of(loss_fn, *leaves: torch.Tensor) -> list[torch.Tensor]:
    for leaf in leaves:
        leaf.grad = None
    loss_fn()
    return [leaf.grad.clone() for leaf in leaves]


AGG_MODES = [
    "token-mean",
    "token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
]
# Every policy loss with the token-level agg modes on one sampler, every agg mode with PPO.
LOSS_CASES = [("ppo", False), *[(k, False) for k in POLICY_LOSSES[1:]], ("ppo", True)]


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize(
    "sampler_args",
    [("obrs", {"budget": 0.8, "topk": 3}), ("obrs", {"lam": 1.2}), ("tis", {}), ("icepop", {})],
    ids=["obrs-topk", "obrs-exact", "tis", "icepop"],
)
def test_micro_batched_gradient_equals_the_unsplit_one(agg: str, sampler_args) -> None:
    """Micro-batches sharing the minibatch's denominators give the unsplit gradient (fp64)."""
    _check_micro_batched_gradient(agg, sampler_args, "ppo", False)


@pytest.mark.parametrize("agg", ["token-sum", "seq-mean-token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize(
    ("kind", "bypass"), LOSS_CASES, ids=[f"{k}{'-bypass' if b else ''}" for k, b in LOSS_CASES]
)
def test_micro_batched_gradient_of_every_policy_loss(agg: str, kind: str, bypass: bool) -> None:
    """The same for every policy loss (sequence-level ones included) and the bypass mode."""
    _check_micro_batched_gradient(agg, ("obrs", {"lam": 1.2}), kind, bypass)


def _check_micro_batched_gradient(agg: str, sampler_args, kind: str, bypass: bool) -> None:
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(N, T, generator=g) > 0.2).double()
    mask[2] = 0  # an empty response
    t, logits_inf, logits_ref = _tensors(torch.arange(N).double() % 3, mask)
    t.logp_ref, t.logp_inf = t.logp_ref.double(), t.logp_inf.double()
    t.advantages, t.response_mask = t.advantages.double(), t.response_mask.double()
    t.logp_w_old = t.logp_inf + 0.1 * torch.randn(N, T, generator=g, dtype=torch.float64)
    logits_ref, logits_inf = logits_ref.double(), logits_inf.double()
    name, params = sampler_args
    sampler = get_sampler(name, **params)
    ids_inf, logp_inf_k = F.topk_logprobs(logits_inf, 4)
    topk = "topk" in sampler.needs()
    target = target_scores(
        logits_ref,
        t.response_ids,
        topk_inf=(ids_inf, logp_inf_k) if topk else None,
        topk_k=sampler.topk_k() if topk else None,
        keep_logits="logits" in sampler.needs(),
    )
    index = torch.tensor([5, 0, 7, 2, 3, 6, 1, 4])
    sampled = run_sampler(
        sampler,
        t,
        index,
        target.rows(index),
        torch.Generator().manual_seed(0),
        logits_inf.log_softmax(-1)[index],
    )
    assert sampled.mask.sum() > 0
    new = logits_ref + 0.3 * torch.randn(N, T, V, generator=g, dtype=torch.float64)
    new.requires_grad_(True)
    w = logits_inf + 0.2 * torch.randn(N, T, V, generator=g, dtype=torch.float64)
    w.requires_grad_(True)

    def loss(rows: torch.Tensor, piece, denominators=None):
        return joint_loss(
            t,
            rows,
            new[rows],
            piece,
            logits_w=w[rows],
            distill_coef=0.5,
            distill_direction="forward",
            clip_eps=0.2,
            clip=True,
            agg=agg,
            rollout_tis_cap=2.0,
            max_len=T,
            denominators=denominators,
            kind=kind,
            clip_eps_high=0.28,
            bypass=bypass,
        ).total

    whole = _grads_of(lambda: loss(index, sampled).backward(), new, w)
    den = minibatch_denominators(sampled.norm_mask, t.response_mask[index], agg, T)

    def split() -> None:
        offset = 0
        for rows in micro_batches(index, 3):
            local = torch.arange(offset, offset + len(rows))
            offset += len(rows)
            loss(rows, sampled.select(local), den).backward()

    parts = _grads_of(split, new, w)
    for a, b in zip(whole, parts, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_micro_batches_split_in_order_and_an_empty_index_gives_none() -> None:
    index = torch.tensor([4, 1, 3, 0, 2])
    assert [p.tolist() for p in micro_batches(index, 2)] == [[4, 1], [3, 0], [2]]
    assert [p.tolist() for p in micro_batches(index, None)] == [[4, 1, 3, 0, 2]]
    assert micro_batches(index[:0], 2) == [] and micro_batches(index[:0], None) == []


def test_distillation_only_gives_the_rollout_model_exactly_the_distillation_gradient() -> None:
    from jackpot.losses import distill_kl_full

    g = torch.Generator().manual_seed(3)
    t, logits_inf, logits_ref = _tensors(torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 0]))
    t.logp_w_old = F.token_logprobs(logits_inf, t.response_ids)
    ones = torch.ones(N, T)
    w = (logits_inf + 0.2 * torch.randn(N, T, V, generator=g)).requires_grad_(True)

    def total(rollout_rl: bool) -> tuple[torch.Tensor, object]:
        w.grad = None
        loss = _loss(
            t,
            logits_ref.clone(),
            SamplerOutput(ones, ones, ones),
            logits_w=w,
            distill_direction="reverse",
            rollout_rl=rollout_rl,
        )
        loss.total.backward()
        assert w.grad is not None
        return w.grad.clone(), loss

    grad_only, only = total(rollout_rl=False)
    grad_both, both = total(rollout_rl=True)
    assert only.rollout is None and both.rollout is not None
    w.grad = None
    (
        0.5 * distill_kl_full(logits_ref, w, ones, direction="reverse", agg="token-mean", max_len=T)
    ).backward()
    torch.testing.assert_close(grad_only, w.grad)
    assert not torch.allclose(grad_only, grad_both)  # the PPO term of the rollout model is gone


def test_automatic_micro_batches_respect_both_budgets_and_hold_at_least_one_sequence() -> None:
    qwen = 151_936
    # 32 response tokens at Qwen's vocabulary: 19.4 MB of fp32 logits per sequence.
    assert auto_micro_batch_size(48, 32, qwen, 16384, 0.25) == 13
    assert auto_micro_batch_size(48, 32, qwen, 16384, 1.0) == 55
    assert auto_micro_batch_size(2048, 32, qwen, 16384, 1.0) == 8  # the token budget binds
    assert auto_micro_batch_size(9000, 8192, qwen, 16384, 0.25) == 1  # one long row still runs
    assert auto_micro_batch_size(22, 8, 19, 16384, 0.25) == 16384 // 22  # a tiny vocabulary
    for seq, resp, vocab, tokens, gb in [(48, 32, qwen, 4096, 0.5), (300, 256, 32000, 9999, 2.0)]:
        n = auto_micro_batch_size(seq, resp, vocab, tokens, gb)
        assert n * seq <= tokens and n * resp * vocab * 4 <= gb * 2**30
        assert (n + 1) * seq > tokens or (n + 1) * resp * vocab * 4 > gb * 2**30


def test_bypass_makes_p_inf_the_old_policy_of_the_policy_loss() -> None:
    t, _, logits_ref = _tensors(torch.arange(N).float() % 3)
    sampled = get_sampler("tis")(SamplerInput(t.logp_inf, t.logp_ref, t.logp_ref, t.response_mask))
    new = logits_ref + 0.1
    got = _loss(t, new, sampled, kind="cispo", bypass=True)
    want, _ = policy_loss(
        F.token_logprobs(new, t.response_ids),
        t.logp_inf,
        t.advantages,
        sampled.mask,
        sampled.norm_mask,
        sampled.weights,
        kind="cispo",
    )
    torch.testing.assert_close(got.policy, want)
    assert not torch.allclose(got.policy, _loss(t, new, sampled).policy)
