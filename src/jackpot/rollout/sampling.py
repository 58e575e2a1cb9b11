"""The sampling distribution ``p_inf`` as a pure function of logits (torch only).

``p_inf`` is the distribution a token was *actually* drawn from (spec, "p_inf is the
distribution actually sampled from"): ``softmax(logits / temperature)``, truncated to the
top-k tokens, then to the top-p nucleus of that renormalised distribution, and renormalised
over the kept tokens. The rollout engine samples from :func:`sampling_logprobs` and records
its values; a trainer that rescores a rollout model calls the same function, so the two can
never disagree about truncation or temperature.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sample_tokens", "sampling_logprobs", "topk_with_sampled"]


def sampling_logprobs(logits: Tensor, temperature: float, top_k: int, top_p: float) -> Tensor:
    """Log-probs ``(..., V)`` of the truncated sampling distribution; ``-inf`` outside it.

    Order as in transformers' and vLLM's samplers: temperature, then top-k, then top-p on the
    renormalised top-k distribution. ``temperature == 0`` is greedy (a point mass on the
    first argmax); ``top_k == 0`` and ``top_p == 1`` switch truncation off. Ties at a
    boundary are all kept, so the kept set does not depend on sort order: top-k keeps every
    token whose logit reaches the k-th largest; top-p keeps the smallest prefix of the
    descending order whose mass reaches ``top_p``, plus tokens tied with its last one.
    Computed in float32 whatever the logits' dtype.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    logits = logits.float()
    if temperature == 0:
        greedy = torch.full_like(logits, float("-inf"))
        return greedy.scatter(-1, logits.argmax(-1, keepdim=True), 0.0)
    scaled = logits / temperature  # (..., V)
    if 0 < top_k < scaled.shape[-1]:
        kth = scaled.topk(top_k, dim=-1).values[..., -1:]  # (..., 1)
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    logp = torch.log_softmax(scaled, dim=-1)
    if top_p < 1.0:
        sorted_logp = logp.sort(dim=-1, descending=True).values  # (..., V)
        probs = sorted_logp.exp()
        mass_before = probs.cumsum(-1) - probs  # mass strictly above each sorted token
        kept = mass_before < top_p  # the first token always has mass_before == 0
        threshold = sorted_logp.masked_fill(~kept, float("inf")).amin(-1, keepdim=True)
        logp = torch.log_softmax(logp.masked_fill(logp < threshold, float("-inf")), dim=-1)
    return logp


def sample_tokens(logp: Tensor, generator: torch.Generator) -> Tensor:
    """One token id per row of ``logp`` ``(B, V)`` -> ``(B,)`` int64, drawn with ``generator``."""
    return torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)


def topk_with_sampled(logp: Tensor, sampled: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k ``(ids, log-probs)`` of ``logp`` ``(B, V)``, each ``(B, k)``, holding ``sampled``.

    When the sampled token ``(B,)`` is not among the top-k it replaces the last slot, so a
    consumer can always find the sampled token's entry. ``k`` is capped at ``V``.
    """
    topk_logp, topk_ids = logp.topk(min(k, logp.shape[-1]), dim=-1)  # (B, k)
    present = (topk_ids == sampled.unsqueeze(-1)).any(-1)  # (B,)
    sampled_logp = logp.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)  # (B,)
    topk_ids[:, -1] = torch.where(present, topk_ids[:, -1], sampled)
    topk_logp[:, -1] = torch.where(present, topk_logp[:, -1], sampled_logp)
    return topk_ids, topk_logp
