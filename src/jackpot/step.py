"""One RL iteration's tensor plumbing as plain functions (paper, Algorithm 1).

The LightningModule calls models and optimisers; everything between a forward pass and a
scalar loss lives here, so a test can run it on hand-made tensors without a Trainer.

Memory at scale: logits exist for one micro-batch at a time. Scoring reduces each
micro-batch's logits to the per-token ``(N, T)`` and top-k ``(N, T, m)`` tensors that cross
the step (:class:`TargetScores`); an update runs its minibatch as micro-batches whose losses
share the minibatch's denominators (:func:`minibatch_denominators`), so the accumulated
gradient equals the unsplit one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from jackpot.functional import gather_logprobs, sampled_logprobs, topk_logprobs
from jackpot.losses import (
    broadcast_to_tokens,
    distill_kl_full,
    group_advantages,
    loss_denominator,
    policy_loss,
    rollout_model_loss,
)
from jackpot.packing import packed_logits
from jackpot.samplers.base import Sampler, SamplerInput, SamplerOutput

__all__ = [
    "JointLoss",
    "StepTensors",
    "TargetScores",
    "candidate_set",
    "empty_target_scores",
    "forward_logits",
    "joint_loss",
    "linear_warmup",
    "merge_micro_stats",
    "micro_batches",
    "minibatch_denominators",
    "minibatch_indices",
    "prompt_indices",
    "run_sampler",
    "seeded_generator",
    "step_tensors",
    "target_scores",
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


def micro_batches(index: Tensor, size: int | None) -> list[Tensor]:
    """Rows ``index`` of a minibatch in consecutive pieces of at most ``size`` (None: one piece)."""
    if not len(index):
        return []
    if size is None or size >= len(index):
        return [index]
    return list(index.split(size))


def auto_micro_batch_size(
    seq_len: int, response_len: int, vocab: int, max_tokens: int, max_logits_gb: float
) -> int:
    """Sequences per forward pass so that one pass holds at most ``max_tokens`` (padded) tokens
    and its ``(n, response_len, vocab)`` fp32 logits at most ``max_logits_gb``; at least one.

    The two bounds are what grows with the batch in a scoring or training pass: activations
    scale with the tokens, the output layer's logits (and their gradient) with tokens x
    vocabulary, which dominates at a 152k vocabulary.
    """
    by_tokens = max_tokens // max(seq_len, 1)
    by_logits = int(max_logits_gb * 2**30 // (max(response_len, 1) * vocab * 4))
    return max(1, min(by_tokens, by_logits))


def forward_logits(
    model: torch.nn.Module,
    ids: Tensor,
    mask: Tensor,
    prompt_len: int,
    temperature: float,
    packed: bool = False,
) -> Tensor:
    """Logits ``(N, T, V)`` predicting each response token, scaled by the temperature.

    ``ids``, ``mask`` ``(N, P + T)``: left-padded prompt then response; positions count real
    tokens only (as the rollout engine does). Position ``P - 1 + t`` predicts response token
    ``t``; ``logits_to_keep`` asks the model for those ``T + 1`` last positions only, so no
    logits are computed for the prompt. ``packed``: the same forward over the real tokens only
    (:func:`jackpot.packing.packed_logits`; the caller checks
    :func:`jackpot.packing.packing_refusal`), zero logits at padded response positions.
    Scoring at the rollout's temperature keeps ``p_ref``, ``p_new`` and ``p_w`` comparable
    with ``p_inf`` (as verl does).
    """
    if packed:
        logits = packed_logits(model, ids, mask, prompt_len)
    else:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        response_len = ids.shape[1] - prompt_len
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            logits_to_keep=response_len + 1,
            use_cache=False,  # one pass: a KV cache would only hold memory
        )
        logits = out.logits[:, :response_len]  # (N, T, V): positions P - 1 ... P + T - 2
    return logits if temperature == 1.0 else logits / temperature


def token_logp(logits: Tensor, ids: Tensor) -> Tensor:
    """Log-prob of ``ids`` ``(n, T)`` under ``softmax(logits)`` ``(n, T, V)``, at least float32."""
    return sampled_logprobs(logits, ids)


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


@dataclass
class TargetScores:
    """What a sampler needs of one policy (p_ref or p_new) for some rows.

    ``logp`` ``(n, T)`` of the sampled tokens; ``candidates`` the ``(n, T, m)`` top-k candidate
    sets of :func:`candidate_set` (ids, p_inf log-probs, p_target log-probs) for top-k
    samplers; ``logits`` ``(n, T, V)`` only for the small-vocabulary samplers that need full
    logits (exact-Z ``obrs``, ``rs``). Per-token and top-k tensors are what may outlive a
    micro-batch; full logits never do at scale.
    """

    logp: Tensor
    candidates: tuple[Tensor, Tensor, Tensor] | None = None
    logits: Tensor | None = None

    def put(self, rows: Tensor, part: TargetScores) -> None:
        """Write ``part`` (scores of ``rows``) into this step-wide holder."""
        self.logp[rows] = part.logp.to(self.logp.dtype)
        if self.candidates is not None and part.candidates is not None:
            for whole, piece in zip(self.candidates, part.candidates, strict=True):
                whole[rows] = piece.to(whole.dtype)
        if self.logits is not None and part.logits is not None:
            self.logits[rows] = part.logits.to(self.logits.dtype)

    def rows(self, index: Tensor) -> TargetScores:
        """The scores of rows ``index``."""
        cands = self.candidates
        return TargetScores(
            self.logp[index],
            None if cands is None else (cands[0][index], cands[1][index], cands[2][index]),
            None if self.logits is None else self.logits[index],
        )

    @staticmethod
    def cat(parts: list[TargetScores]) -> TargetScores:
        """Concatenate the scores of consecutive micro-batches."""
        first = parts[0]
        cands = None
        if first.candidates is not None:
            cands = cast(
                tuple[Tensor, Tensor, Tensor],
                tuple(torch.cat([cast(Any, p.candidates)[i] for p in parts]) for i in range(3)),
            )
        logits = None
        if first.logits is not None:
            logits = torch.cat([cast(Tensor, p.logits) for p in parts])
        return TargetScores(torch.cat([p.logp for p in parts]), cands, logits)


def empty_target_scores(
    n: int,
    t: int,
    *,
    topk_m: int | None,
    vocab: int | None,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> TargetScores:
    """A step-wide holder for ``n`` rows, filled micro-batch by micro-batch (NaN until then).

    ``dtype`` of the log-probs: float32, or float64 for float64 models (never lower: the
    OBRS math runs on these).
    """

    def full(*shape: int, value: float) -> Tensor:
        return torch.full(shape, value, dtype=dtype, device=device)

    cands = None
    if topk_m is not None:
        cands = (
            torch.zeros(n, t, topk_m, dtype=torch.long, device=device),
            full(n, t, topk_m, value=-math.inf),
            full(n, t, topk_m, value=-math.inf),
        )
    logits = None if vocab is None else full(n, t, vocab, value=math.nan)
    return TargetScores(full(n, t, value=math.nan), cands, logits)


def target_scores(
    logits: Tensor,
    response_ids: Tensor,
    *,
    topk_inf: tuple[Tensor, Tensor] | None,
    topk_k: int | None,
    keep_logits: bool,
) -> TargetScores:
    """Reduce one micro-batch's detached logits ``(n, T, V)`` to what the sampler needs.

    ``topk_inf`` = the rows' recorded top-k of p_inf (ids, log-probs) and ``topk_k`` the k of
    the policy's top-k when the sampler uses candidate sets; ``keep_logits`` for full-logit
    samplers.
    """
    logits = logits.detach()
    cands = None
    if topk_k is not None:
        if topk_inf is None:
            raise ValueError("a top-k sampler needs the recorded top-k of p_inf")
        cands = candidate_set(topk_inf[0], topk_inf[1], logits, topk_k)
    full = logits.to(torch.promote_types(logits.dtype, torch.float32)) if keep_logits else None
    return TargetScores(sampled_logprobs(logits, response_ids), cands, full)


def run_sampler(
    sampler: Sampler,
    t: StepTensors,
    index: Tensor,
    target: TargetScores,
    generator: torch.Generator,
    logits_inf: Tensor | None = None,
) -> SamplerOutput:
    """Build the sampler's input for rows ``index`` and run it; ``target`` holds those rows.

    ``target`` is p_target's: the candidate sets for top-k samplers (``needs() == {"topk"}``),
    the full logits for full-logit samplers (``needs() == {"logits"}``, with ``logits_inf`` the
    full log p_inf of the same rows).
    """
    needs = sampler.needs()
    ids = logp_i = logp_t = None
    if "topk" in needs:
        if target.candidates is None:
            raise ValueError(f"sampler {sampler.name!r} needs the recorded top-k of p_inf")
        ids, logp_i, logp_t = target.candidates
    full = "logits" in needs
    if full and (logits_inf is None or target.logits is None):
        raise ValueError(f"sampler {sampler.name!r} needs the full p_inf (decoupled mode)")
    batch = SamplerInput(
        logp_inf=t.logp_inf[index],
        logp_ref=t.logp_ref[index],
        logp_target=target.logp,
        response_mask=t.response_mask[index],
        topk_ids=ids,
        topk_logp_inf=logp_i,
        topk_logp_target=logp_t,
        logits_inf=logits_inf if full else None,
        logits_target=target.logits if full else None,
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
    denominators: tuple[Tensor, Tensor] | None = None,
    rollout_rl: bool = True,
    kind: str = "ppo",
    clip_eps_high: float | None = None,
    clip_ratio_c: float = 3.0,
    bypass: bool = False,
) -> JointLoss:
    """Policy loss with the sampler's mask/weights, plus rollout-model RL and distillation.

    ``logits_new`` ``(n, T, V)`` of the policy (with grad); ``logits_w`` of the rollout model
    (with grad) or None when it is frozen. One backward through ``total`` updates both
    models (the teacher in the distillation term is detached). For a micro-batch of a larger
    minibatch, ``denominators`` = (:func:`~jackpot.losses.loss_denominator` of the minibatch's
    ``sampled.norm_mask``, of its response mask): the micro-batch losses then add up to the
    minibatch's loss, and so do their gradients. ``rollout_rl=False`` trains the rollout model
    by distillation alone (no PPO term of its own). ``kind`` is the policy loss of both models
    (:data:`~jackpot.losses.POLICY_LOSSES`); ``bypass`` makes ``p_inf`` their old policy (the
    ratio's denominator) in place of ``p_ref`` / ``p_w_old``.
    """
    den_pol, den_roll = (None, None) if denominators is None else denominators
    options = {
        "kind": kind,
        "clip_eps": clip_eps,
        "clip_eps_high": clip_eps_high,
        "clip": clip,
        "clip_ratio_c": clip_ratio_c,
        "agg": agg,
        "max_len": max_len,
    }
    ids = t.response_ids[index]
    resp = t.response_mask[index]
    adv = t.advantages[index]
    logp_new = token_logp(logits_new, ids)
    l_pol, stats = policy_loss(
        logp_new,
        t.logp_inf[index] if bypass else t.logp_ref[index],
        adv,
        sampled.mask,
        sampled.norm_mask,
        sampled.weights,
        denominator=den_pol,
        **options,  # type: ignore[arg-type]
    )
    stats = {f"ppo/{k}": v for k, v in stats.items()}
    total = l_pol
    l_roll = l_dist = None
    if logits_w is not None:
        if rollout_rl:
            assert t.logp_w_old is not None
            l_roll, roll_stats = rollout_model_loss(
                token_logp(logits_w, ids),
                t.logp_w_old[index],
                t.logp_inf[index],
                adv,
                resp,
                tis_cap=rollout_tis_cap,
                bypass=bypass,
                denominator=den_roll,
                **options,  # type: ignore[arg-type]
            )
            total = total + l_roll
            stats.update({f"rollout/{k}": v for k, v in roll_stats.items()})
        l_dist = distill_kl_full(
            logits_new.detach(),
            logits_w,
            resp,
            direction=distill_direction,  # type: ignore[arg-type]
            agg=agg,  # type: ignore[arg-type]
            max_len=max_len,
            denominator=den_roll,
        )
        total = total + distill_coef * l_dist
    return JointLoss(total, l_pol, l_roll, l_dist, stats)


def minibatch_denominators(
    norm_mask: Tensor, response_mask: Tensor, agg: str, max_len: int
) -> tuple[Tensor, Tensor]:
    """The policy's and the rollout model's loss denominators of a whole minibatch."""
    return (
        loss_denominator(norm_mask, agg, max_len),  # type: ignore[arg-type]
        loss_denominator(response_mask, agg, max_len),  # type: ignore[arg-type]
    )


def merge_micro_stats(parts: list[dict[str, Tensor]], summed: frozenset[str]) -> dict[str, Tensor]:
    """One minibatch's stats from its micro-batches': ``summed`` keys add up (loss parts that
    share the minibatch's denominator), the others are averaged."""
    out: dict[str, Tensor] = {}
    for key in parts[0]:
        values = torch.stack([p[key].detach().float() for p in parts])
        out[key] = values.sum() if key in summed else values.mean()
    return out
