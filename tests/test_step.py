"""The RL iteration's tensor plumbing on hand-made tensors: edge cases without a Trainer."""

from __future__ import annotations

import pytest
import torch

import jackpot.functional as F
from jackpot.samplers import get_sampler
from jackpot.samplers.base import SamplerOutput
from jackpot.step import (
    candidate_set,
    joint_loss,
    minibatch_indices,
    prompt_indices,
    run_sampler,
    seeded_generator,
    step_tensors,
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


def _loss(t, logits_new, sampled):
    return joint_loss(
        t,
        torch.arange(N),
        logits_new,
        sampled,
        logits_w=None,
        distill_coef=0.5,
        distill_direction="forward",
        clip_eps=0.2,
        clip=True,
        agg="token-mean",
        rollout_tis_cap=2.0,
        max_len=T,
    )


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
        t.logp_ref,
        logits_ref,
        torch.Generator().manual_seed(0),
        logits_inf.log_softmax(-1),
        None,
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
            t.logp_ref,
            logits_ref,
            torch.Generator(),
            None,
            None,
        )
