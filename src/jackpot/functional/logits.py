"""Memory-bounded reductions of ``(B, T, V)`` logits: log-probs of chosen ids, top-k, exact Z.

Each runs over flattened rows in chunks, so the extra peak memory is ``O(chunk_size * V)``
instead of a full ``B x T x V`` fp32 log-softmax copy (measured figures in the README).
Logits must already describe the distribution meant: for ``p_inf`` that is the *sampling*
distribution (temperature applied, truncated tokens at ``-inf``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from jackpot.functional.obrs import log_normalizer

__all__ = [
    "max_log_ratio_from_logits",
    "normalizer_from_logits",
    "token_logprobs",
    "topk_logprobs",
]


def _map_rows(
    fn: Callable[..., Tensor | tuple[Tensor, ...]],
    tensors: tuple[Tensor, ...],
    chunk_size: int,
) -> tuple[Tensor, ...]:
    """Apply ``fn`` to row chunks of ``(..., V)`` / ``(...)`` tensors; concatenate the results."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    lead = tensors[0].shape[:-1]
    rows = [t.reshape(lead.numel(), *t.shape[len(lead) :]) for t in tensors]
    pieces: list[tuple[Tensor, ...]] = []
    for start in range(0, max(lead.numel(), 1), chunk_size):
        out = fn(*(r[start : start + chunk_size] for r in rows))
        pieces.append(out if isinstance(out, tuple) else (out,))
    return tuple(
        torch.cat([p[i] for p in pieces]).reshape(*lead, *pieces[0][i].shape[1:])
        for i in range(len(pieces[0]))
    )


def token_logprobs(logits: Tensor, ids: Tensor) -> Tensor:
    """``log softmax(logits)[ids]`` -> ``(...)`` without a ``(..., V)`` log-softmax copy.

    ``logits`` ``(..., V)``, ``ids`` ``(...)``. Differentiable: ``logit - logsumexp``.
    """
    picked = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


@torch.no_grad()
def topk_logprobs(logits: Tensor, k: int, *, chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Top-k ``(ids, log-probs)`` of ``softmax(logits)``, each ``(..., k)``; detached."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")

    def chunk(lg: Tensor) -> tuple[Tensor, Tensor]:
        vals, ids = lg.float().topk(min(k, lg.shape[-1]), dim=-1)
        return ids, vals - torch.logsumexp(lg.float(), dim=-1, keepdim=True)

    ids, logp = _map_rows(chunk, (logits,), chunk_size)
    return ids, logp


@torch.no_grad()
def normalizer_from_logits(
    logits_target: Tensor, logits_inf: Tensor, lam: float | Tensor, *, chunk_size: int = 1024
) -> Tensor:
    """Exact ``Z(lam)`` per position from ``(..., V)`` logits, in row chunks -> ``(...)``."""
    lam_t = torch.as_tensor(lam, dtype=torch.float32, device=logits_target.device)
    lam_rows = lam_t.expand(logits_target.shape[:-1]).unsqueeze(-1)  # (..., 1)

    def chunk(lt: Tensor, li: Tensor, lam_c: Tensor) -> Tensor:
        lp_t = torch.log_softmax(lt.float(), dim=-1)
        lp_i = torch.log_softmax(li.float(), dim=-1)
        return log_normalizer(lp_t, lp_i, lam_c.squeeze(-1)).exp()

    (z,) = _map_rows(chunk, (logits_target, logits_inf, lam_rows), chunk_size)
    return z


@torch.no_grad()
def max_log_ratio_from_logits(
    logits_target: Tensor, logits_inf: Tensor, *, chunk_size: int = 1024
) -> Tensor:
    """``log max_x p_target(x)/p_inf(x)`` per position -> ``(...)``; ``+inf`` if p_inf misses mass.

    The bound ``M`` of classic rejection sampling (``lam = M`` makes ``p_obrs = p_target``).
    """

    def chunk(lt: Tensor, li: Tensor) -> Tensor:
        lp_t = torch.log_softmax(lt.float(), dim=-1)
        lp_i = torch.log_softmax(li.float(), dim=-1)
        ratio = torch.where(
            lp_t == float("-inf"), torch.full_like(lp_t, float("-inf")), lp_t - lp_i
        )
        return ratio.amax(dim=-1)

    (m,) = _map_rows(chunk, (logits_target, logits_inf), chunk_size)
    return m
