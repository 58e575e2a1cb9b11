"""Rollouts from a transformers causal LM with a manual, vectorised KV-cache decode loop.

Why not ``model.generate``: in transformers 5.x ``generate(do_sample=True)`` silently applies
``top_k=50`` and ``min_new_tokens`` sets EOS scores to ``-inf``, so the distribution actually
sampled from differs from the one a user asked for, and recovering it from the returned
scores is fragile. Here every token is drawn from :func:`sampling_logprobs` of the model's
logits, and exactly those log-probs are recorded. The loop was also faster than
``generate`` on tiny CPU models (figures in the module's benchmark note in the README).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch
from torch import Tensor, nn
from transformers import DynamicCache, PreTrainedModel

from jackpot.rollout.batch import RolloutBatch, left_pad
from jackpot.rollout.engine import RolloutEngine, SamplingParams
from jackpot.rollout.sampling import sample_tokens, sampling_logprobs, topk_with_sampled

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

    def __init__(self, model: PreTrainedModel, pad_token_id: int) -> None:
        """Wrap ``model``; ``pad_token_id`` pads prompts (left) and finished responses (right)."""
        self.model = model
        self.pad_token_id = pad_token_id
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
        prompts, prompt_mask = left_pad(prompt_ids, self.pad_token_id)
        prompts = prompts.repeat_interleave(group_size, dim=0).to(device)  # (N, P)
        prompt_mask = prompt_mask.repeat_interleave(group_size, dim=0).to(device)  # (N, P)
        group_ids = torch.arange(len(prompt_ids), device=device).repeat_interleave(group_size)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                record = self._decode(prompts, prompt_mask, params, generator)
        finally:
            self.model.train(was_training)
        return RolloutBatch(
            prompt_ids=prompts,
            prompt_mask=prompt_mask,
            group_ids=group_ids,
            params=params,
            pad_token_id=self.pad_token_id,
            vocab_size=self.vocab_size,
            **record,
        )

    def _decode(
        self,
        prompts: Tensor,
        prompt_mask: Tensor,
        params: SamplingParams,
        generator: torch.Generator,
    ) -> _DecodeRecord:
        """Prefill, then one batched forward per new token; returns the per-token records."""
        n, p = prompts.shape
        device = prompts.device
        steps = params.max_new_tokens
        k = min(params.logprobs_k, self.vocab_size)
        # Preallocated outputs; positions after a stop are a point mass on the pad token.
        response_ids = torch.full((n, steps), self.pad_token_id, dtype=torch.int64, device=device)
        logp_inf = torch.zeros((n, steps), dtype=torch.float32, device=device)
        topk_ids = torch.full((n, steps, k), self.pad_token_id, dtype=torch.int64, device=device)
        topk_logp = torch.full((n, steps, k), float("-inf"), dtype=torch.float32, device=device)
        topk_logp[..., 0] = 0.0
        response_mask = torch.zeros((n, steps), dtype=torch.int64, device=device)
        stop_ids = torch.tensor(params.stop_token_ids, dtype=torch.int64, device=device)
        done = torch.zeros(n, dtype=torch.bool, device=device)
        # Attention mask over prompt + all possible new tokens; sliced as the cache grows.
        attention = torch.cat([prompt_mask, torch.ones_like(response_mask)], dim=1)  # (N, P+steps)
        positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)  # (N, P) left padding -> 0
        next_position = prompt_mask.sum(-1, keepdim=True)  # (N, 1)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=prompts,
            attention_mask=prompt_mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        used = 0
        for t in range(steps):
            logp = sampling_logprobs(
                out.logits[:, -1], params.temperature, params.top_k, params.top_p
            )
            token = sample_tokens(logp, generator)  # (N,)
            ids_t, logp_t = topk_with_sampled(logp, token, k)  # (N, k) each
            live = ~done
            response_ids[:, t] = torch.where(live, token, self.pad_token_id)
            logp_inf[:, t] = torch.where(live, logp.gather(-1, token[:, None]).squeeze(-1), 0.0)
            topk_ids[:, t] = torch.where(live[:, None], ids_t, topk_ids[:, t])
            topk_logp[:, t] = torch.where(live[:, None], logp_t, topk_logp[:, t])
            response_mask[:, t] = live.long()
            done = done | (live & torch.isin(token, stop_ids))
            used = t + 1
            if t + 1 == steps or bool(done.all()):
                break
            out = self.model(
                input_ids=response_ids[:, t : t + 1],
                attention_mask=attention[:, : p + t + 1],
                position_ids=next_position + t,
                cache=cache,
                use_cache=True,
            )
        return {
            "response_ids": response_ids[:, :used],
            "response_mask": response_mask[:, :used],
            "logp_inf": logp_inf[:, :used],
            "topk_ids": topk_ids[:, :used],
            "topk_logp": topk_logp[:, :used],
            "finished": done,
        }
