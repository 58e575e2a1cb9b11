"""Rollouts from a transformers causal LM with a manual, vectorised KV-cache decode loop.

Why not ``model.generate``: in transformers 5.x ``generate(do_sample=True)`` silently applies
``top_k=50`` and ``min_new_tokens`` sets EOS scores to ``-inf``, so the distribution actually
sampled from differs from the one a user asked for, and recovering it from the returned
scores is fragile. Here every token is drawn from :func:`sampling_logprobs` of the model's
logits, and exactly those log-probs are recorded. The model's forward with its KV cache
runs in :mod:`jackpot.rollout.decode`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from jackpot.rollout.batch import RolloutBatch, left_pad
from jackpot.rollout.decode import Decode
from jackpot.rollout.engine import RolloutEngine, SamplingParams
from jackpot.rollout.sampling import sample_tokens, sampling_logprobs, topk_with_sampled
from jackpot.training.sharding import is_sharded

__all__ = ["HFRolloutEngine"]


class _DecodeRecord(TypedDict):
    """What the decode loop records, named as the :class:`RolloutBatch` fields it fills."""

    response_ids: Tensor
    response_mask: Tensor
    logp_inf: Tensor
    topk_ids: Tensor
    topk_logp: Tensor
    finished: Tensor


class HFRolloutEngine(RolloutEngine):
    """Batched sampling from a transformers causal LM (Qwen2, Llama, ...) with a KV cache."""

    def __init__(
        self,
        model: PreTrainedModel,
        pad_token_id: int,
        done_check_every: int | None = None,
    ) -> None:
        """Wrap ``model``; ``pad_token_id`` pads prompts (left) and finished responses (right).

        ``done_check_every``: decode steps between checks that every row has stopped. Each
        check is a host sync on an accelerator; on a CPU it is free, while a late check runs
        forwards whose tokens are cut off. Default: every step on CPU, every 8 elsewhere.
        """
        if done_check_every is not None and done_check_every < 1:
            raise ValueError(f"done_check_every must be >= 1 or None, got {done_check_every}")
        self.model = model
        self.pad_token_id = pad_token_id
        self.done_check_every = done_check_every
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])

    def sync_weights(self, model: nn.Module) -> None:
        """Nothing to copy: the engine samples from ``model`` itself (the one it wraps)."""
        if model is not self.model:
            raise ValueError("HFRolloutEngine.sync_weights got another model than it wraps")

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        group_size: int,
        params: SamplingParams,
        generator: torch.Generator,
    ) -> RolloutBatch:
        """Sample ``group_size`` responses per prompt; see :meth:`RolloutEngine.generate`.

        ``generator`` must live on the model's device. The response length ``T`` is the
        number of decode steps run: ``max_new_tokens``, or fewer when every row stopped.
        """
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        device = self.model.device
        prompts, prompt_mask = left_pad(prompt_ids, self.pad_token_id)  # (U, P) distinct
        prompts, prompt_mask = prompts.to(device), prompt_mask.to(device)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                decode = Decode(self.model, prompts, prompt_mask, group_size, params.max_new_tokens)
                record = self._decode(decode, params, generator)
        finally:
            self.model.train(was_training)
        return RolloutBatch(
            prompt_ids=prompts.repeat_interleave(group_size, dim=0),  # (N, P)
            prompt_mask=prompt_mask.repeat_interleave(group_size, dim=0),
            group_ids=torch.arange(len(prompt_ids), device=device).repeat_interleave(group_size),
            params=params,
            pad_token_id=self.pad_token_id,
            vocab_size=self.vocab_size,
            **record,
        )

    def _decode(
        self, decode: Decode, params: SamplingParams, generator: torch.Generator
    ) -> _DecodeRecord:
        """Sample a token per step from the prefilled ``decode``; returns the per-token records.

        The loop only samples and feeds tokens back; which positions follow a stop token is
        worked out once at the end from the sampled tokens, and whether rows have stopped is
        asked every ``done_check_every`` tokens (the only host sync of the loop). There the
        loop ends when every row has stopped (under a sharded model: every rank's row, a rank
        done before the others keeps running forwards without sampling), and otherwise drops
        the stopped rows from the decode batch once they are at least an eighth of it: later
        forwards compute only rows still generating. Every step still samples all ``N`` rows
        (stopped rows from placeholder logits, their tokens masked at the end), so the
        generator's stream, and with it every live row's tokens, does not depend on when rows
        were dropped, nor on other ranks. Steps
        run past the last stop are cut off, so the records equal a check after every token.
        """
        logits = decode.logits
        device, (n, vocab) = logits.device, logits.shape
        k = min(params.logprobs_k, self.vocab_size)
        every = self.done_check_every or (1 if device.type == "cpu" else 8)
        stop_ids = torch.tensor(params.stop_token_ids, dtype=torch.int64, device=device)
        pad = torch.tensor(self.pad_token_id, dtype=torch.int64, device=device)
        done = torch.zeros(n, dtype=torch.bool, device=device)
        rows = torch.arange(n, device=device)  # the decode batch's rows in the full batch
        tokens: list[Tensor] = []  # (N,) per step, as sampled (also after a row stopped)
        token_logp: list[Tensor] = []  # (N,) log p_inf of the sampled token
        topk: list[tuple[Tensor, Tensor]] = []  # (N, k) ids and log-probs, when k > 1
        idle = False  # every row here stopped, another rank's have not: forward, no sampling
        for t in range(params.max_new_tokens):
            if not idle:
                logits = decode.logits
                if len(rows) < n:  # stopped rows: placeholder logits, their tokens are masked
                    logits = logits.new_zeros((n, vocab)).index_copy_(0, rows, logits)
                logp = sampling_logprobs(logits, params.temperature, params.top_k, params.top_p)
                token = sample_tokens(logp, generator)  # (N,)
                tokens.append(token)
                token_logp.append(logp.gather(-1, token[:, None]).squeeze(-1))
                if k > 1:  # k == 1 is the sampled token itself: nothing more to record
                    topk.append(topk_with_sampled(logp, token, k))
                fed = torch.where(done, pad, token)  # rows that stopped before t: padding
                done = done | torch.isin(token, stop_ids)
            if t + 1 == params.max_new_tokens:
                break
            if (t + 1) % every == 0:
                live = ~done[rows]
                n_live = int(live.sum())
                if self._all_stopped(n_live):
                    break
                idle = n_live == 0
                if n_live and 8 * (len(rows) - n_live) >= len(rows):
                    keep = live.nonzero().squeeze(-1)
                    decode.select(keep)
                    rows = rows[keep]
            decode.step(fed[rows], t)
        return self._records(tokens, token_logp, topk, stop_ids)

    def _all_stopped(self, n_live: int) -> bool:
        """Whether no row is live, on any rank when the model is sharded: every rank's forward
        takes part in the others' all-gathers, so all decode until the last row stops."""
        if not is_sharded(self.model):
            return n_live == 0
        live = torch.tensor([n_live], device=self.model.device)
        torch.distributed.all_reduce(live, op=torch.distributed.ReduceOp.MAX)
        return int(live) == 0

    def _records(
        self,
        tokens: list[Tensor],
        token_logp: list[Tensor],
        topk: list[tuple[Tensor, Tensor]],
        stop_ids: Tensor,
    ) -> _DecodeRecord:
        """Mask the decode loop's raw per-step outputs: after a row's stop, a point mass on pad.

        The length is cut at the first step after which every row had stopped.
        """
        sampled = torch.stack(tokens, dim=1)  # (N, T)
        stopped = torch.isin(sampled, stop_ids).cumsum(-1) > 0  # (N, T) stop at or before t
        live = torch.cat([torch.ones_like(stopped[:, :1]), ~stopped[:, :-1]], dim=1)  # (N, T)
        all_stopped = stopped.all(0).nonzero()
        used = int(all_stopped[0]) + 1 if len(all_stopped) else sampled.shape[1]
        live = live[:, :used]
        response_ids = torch.where(live, sampled[:, :used], self.pad_token_id)
        logp_inf = torch.where(live, torch.stack(token_logp, dim=1)[:, :used], 0.0)
        if topk:
            ids = torch.stack([i for i, _ in topk], dim=1)[:, :used]  # (N, T, k)
            logp_k = torch.stack([lp for _, lp in topk], dim=1)[:, :used]
            dead = torch.full_like(logp_k[0, 0], float("-inf"))
            dead[0] = 0.0  # a point mass on the pad token in slot 0
            topk_ids = torch.where(live[..., None], ids, self.pad_token_id)
            topk_logp = torch.where(live[..., None], logp_k, dead)
        else:
            # Own storage, not views: a rollout file (safetensors) refuses shared tensors.
            topk_ids, topk_logp = response_ids[..., None].clone(), logp_inf[..., None].clone()
        return {
            "response_ids": response_ids,
            "response_mask": live.long(),
            "logp_inf": logp_inf,
            "topk_ids": topk_ids,
            "topk_logp": topk_logp,
            "finished": stopped[:, used - 1],
        }
