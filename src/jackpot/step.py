"""One RL iteration's tensor plumbing as plain functions (paper, Algorithm 1).

The LightningModule calls models and optimisers; everything between a forward pass and a
scalar loss lives here, so a test can run it on hand-made tensors without a Trainer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from jackpot.functional import gather_logprobs, token_logprobs, topk_logprobs
from jackpot.losses import (
    broadcast_to_tokens,
    distill_kl_full,
    group_advantages,
    policy_loss,
    rollout_model_loss,
)
from jackpot.samplers.base import Sampler, SamplerInput, SamplerOutput

__all__ = [
    "JointLoss",
    "StepTensors",
    "candidate_set",
    "forward_logits",
    "joint_loss",
    "linear_warmup",
    "minibatch_indices",
    "prompt_indices",
    "run_sampler",
    "seeded_generator",
    "step_tensors",
    "token_logp",
]


def linear_warmup(steps: int) -> Callable[[int], float]:
    """LR multiplier rising linearly over ``steps`` optimiser steps, then 1."""
    warm = max(steps, 1)
    return lambda s: min(1.0, (s + 1) / warm)


def seeded_generator(
    seed: int, step: int, rank: int, stream: int, device: torch.device | str = "cpu"
) -> torch.Generator:
    """A generator determined by (seed, step, rank, stream): a resumed run redraws the same.

    Streams separate independent uses within a step (0 rollout, 1 acceptance and minibatch
    order, 2 evaluation), so adding draws to one never shifts another.
    """
    mixed = (((seed * 1_000_003 + step) * 1_009 + rank) * 101 + stream) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(mixed)


def prompt_indices(
    num_examples: int, step: int, per_rank: int, seed: int, rank: int, world: int
) -> list[int]:
    """Training prompts of RL step ``step`` on ``rank``: a seeded draw, disjoint across ranks."""
    gen = seeded_generator(seed, step, rank=0, stream=3)
    total = per_rank * world
    picks = torch.randperm(num_examples, generator=gen)[: min(total, num_examples)]
    if total > num_examples:  # fewer prompts than asked for: cycle through them
        picks = picks.repeat(math.ceil(total / num_examples))[:total]
    return picks[rank * per_rank : (rank + 1) * per_rank].tolist()


def forward_logits(
    model: torch.nn.Module, ids: Tensor, mask: Tensor, prompt_len: int, temperature: float
) -> Tensor:
    """Logits ``(N, T, V)`` predicting each response token, scaled by the temperature.

    ``ids``, ``mask`` ``(N, P + T)``: left-padded prompt then response; positions count real
    tokens only (as the rollout engine does). Position ``P - 1 + t`` predicts response token
    ``t``. Scoring at the rollout's temperature keeps ``p_ref``, ``p_new`` and ``p_w``
    comparable with ``p_inf`` (as verl does).
    """
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    response_len = ids.shape[1] - prompt_len
    return logits[:, prompt_len - 1 : prompt_len - 1 + response_len] / temperature


def token_logp(logits: Tensor, ids: Tensor) -> Tensor:
    """Log-prob of ``ids`` ``(n, T)`` under ``softmax(logits)`` ``(n, T, V)``, in float32."""
    return token_logprobs(logits.float(), ids)


@dataclass
class StepTensors:
    """Per-step quantities fixed before the updates, all ``(N, T)`` unless stated."""

    response_ids: Tensor
    response_mask: Tensor
    advantages: Tensor
    logp_inf: Tensor
    logp_ref: Tensor
    logp_w_old: Tensor | None
    rewards: Tensor
    """``(N,)``."""


def step_tensors(
    response_ids: Tensor,
    response_mask: Tensor,
    rewards: Tensor,
    group_ids: Tensor,
    logp_inf: Tensor,
    logp_ref: Tensor,
    logp_w_old: Tensor | None,
    advantage_mode: str,
) -> StepTensors:
    """GRPO advantages broadcast over tokens, bundled with the fixed log-probs."""
    mask = response_mask.to(logp_ref.dtype)
    adv = group_advantages(rewards.to(logp_ref.dtype), group_ids, mode=advantage_mode)  # type: ignore[arg-type]
    return StepTensors(
        response_ids=response_ids,
        response_mask=mask,
        advantages=broadcast_to_tokens(adv, mask),
        logp_inf=logp_inf.to(logp_ref.dtype),
        logp_ref=logp_ref,
        logp_w_old=logp_w_old,
        rewards=rewards,
    )


def minibatch_indices(n: int, num_minibatches: int, generator: torch.Generator) -> list[Tensor]:
    """A random split of ``range(n)`` into ``num_minibatches`` near-equal index tensors."""
    order = torch.randperm(n, generator=generator, device=generator.device)
    return [chunk for chunk in order.chunk(min(num_minibatches, n)) if chunk.numel()]


def candidate_set(
    topk_ids_inf: Tensor, topk_logp_inf: Tensor, logits_target: Tensor, k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``topk(p_inf) ∪ topk(p_target)`` with both log-probs, each ``(N, T, k_inf + k)``.

    ``p_inf`` is known only on its recorded top-k; a ``p_target`` top-k token outside it gets
    ``-inf`` (unknown), which :func:`~jackpot.functional.sparse_topk_normalizer` treats as 0.
    """
    ids_tgt, _ = topk_logprobs(logits_target, k)  # (N, T, k)
    ids = torch.cat([topk_ids_inf, ids_tgt], dim=-1)  # (N, T, k_inf + k)
    logp_target = gather_logprobs(logits_target, ids)  # chunked: no (N, T, V) copy
    unknown = torch.full(ids_tgt.shape, float("-inf"), dtype=topk_logp_inf.dtype)
    logp_inf = torch.cat([topk_logp_inf, unknown.to(topk_logp_inf.device)], dim=-1)
    return ids, logp_inf.to(logp_target.dtype), logp_target


def run_sampler(
    sampler: Sampler,
    t: StepTensors,
    index: Tensor,
    logp_target: Tensor,
    logits_target: Tensor,
    generator: torch.Generator,
    logits_inf: Tensor | None = None,
    topk_inf: tuple[Tensor, Tensor] | None = None,
) -> SamplerOutput:
    """Build the sampler's input for rows ``index`` and run it; tensors are already indexed.

    ``logp_target`` ``(n, T)`` and ``logits_target`` ``(n, T, V)`` are p_target's; the sampler
    gets full logits when it needs them (``needs() == {"logits"}``, with ``logits_inf`` the
    full log p_inf), or the candidate set from the recorded top-k ``topk_inf`` of p_inf.
    """
    needs = sampler.needs()
    ids = logp_i = logp_t = None
    if "topk" in needs:
        if topk_inf is None:
            raise ValueError(f"sampler {sampler.name!r} needs the recorded top-k of p_inf")
        ids, logp_i, logp_t = candidate_set(
            topk_inf[0], topk_inf[1], logits_target, sampler.topk_k()
        )
    full = "logits" in needs
    if full and logits_inf is None:
        raise ValueError(f"sampler {sampler.name!r} needs the full p_inf (decoupled mode)")
    batch = SamplerInput(
        logp_inf=t.logp_inf[index],
        logp_ref=t.logp_ref[index],
        logp_target=logp_target,
        response_mask=t.response_mask[index],
        topk_ids=ids,
        topk_logp_inf=logp_i,
        topk_logp_target=logp_t,
        logits_inf=logits_inf if full else None,
        logits_target=logits_target if full else None,
        generator=generator,
    )
    return sampler(batch)


@dataclass
class JointLoss:
    """The paper's joint objective ``L = L_pol + L_roll + beta_dist L_dist`` and its parts."""

    total: Tensor
    policy: Tensor
    rollout: Tensor | None
    distill: Tensor | None
    stats: dict[str, Tensor]


def joint_loss(
    t: StepTensors,
    index: Tensor,
    logits_new: Tensor,
    sampled: SamplerOutput,
    *,
    logits_w: Tensor | None,
    distill_coef: float,
    distill_direction: str,
    clip_eps: float,
    clip: bool,
    agg: str,
    rollout_tis_cap: float,
    max_len: int,
) -> JointLoss:
    """Policy PPO loss with the sampler's mask/weights, plus rollout-model RL and distillation.

    ``logits_new`` ``(n, T, V)`` of the policy (with grad); ``logits_w`` of the rollout model
    (with grad) or None when it is frozen. One backward through ``total`` updates both
    models (the teacher in the distillation term is detached).
    """
    ids = t.response_ids[index]
    resp = t.response_mask[index]
    adv = t.advantages[index]
    logp_new = token_logp(logits_new, ids)
    l_pol, stats = policy_loss(
        logp_new,
        t.logp_ref[index],
        adv,
        sampled.mask,
        sampled.norm_mask,
        sampled.weights,
        clip_eps=clip_eps,
        clip=clip,
        agg=agg,  # type: ignore[arg-type]
        max_len=max_len,
    )
    stats = {f"ppo/{k}": v for k, v in stats.items()}
    total = l_pol
    l_roll = l_dist = None
    if logits_w is not None:
        assert t.logp_w_old is not None
        logp_w = token_logp(logits_w, ids)
        l_roll, roll_stats = rollout_model_loss(
            logp_w,
            t.logp_w_old[index],
            t.logp_inf[index],
            adv,
            resp,
            tis_cap=rollout_tis_cap,
            clip_eps=clip_eps,
            clip=clip,
            agg=agg,  # type: ignore[arg-type]
            max_len=max_len,
        )
        l_dist = distill_kl_full(
            logits_new.detach(),
            logits_w,
            resp,
            direction=distill_direction,  # type: ignore[arg-type]
            agg=agg,  # type: ignore[arg-type]
            max_len=max_len,
        )
        total = total + l_roll + distill_coef * l_dist
        stats.update({f"rollout/{k}": v for k, v in roll_stats.items()})
    return JointLoss(total, l_pol, l_roll, l_dist, stats)
