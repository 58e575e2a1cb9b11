"""Memory-bounded reductions of ``(B, T, V)`` logits: log-probs of chosen ids, top-k, exact Z.

Each runs over flattened rows in chunks, so the extra peak memory is ``O(chunk_size * V)``
instead of a full ``B x T x V`` fp32 log-softmax copy (measured figures in
docs/results/bench.md, section 1).
Logits must already describe the distribution meant: for ``p_inf`` that is the *sampling*
distribution (temperature applied, truncated tokens at ``-inf``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from jackpot.functional.obrs import log_normalizer

__all__ = [
    "entropy_from_logits",
    "gather_logprobs",
    "map_rows_checkpointed",
    "max_log_ratio_from_logits",
    "normalizer_from_logits",
    "sampled_logprobs",
    "token_logprobs",
    "topk_logprobs",
]


def _compute_dtype(*logits: Tensor) -> torch.dtype:
    """The dtype reductions run (and return) in: the inputs' own, at least float32.

    float64 stays float64 (no silent downcast); float16 / bfloat16 are upcast, since a
    log-softmax over a large vocabulary in half precision loses the small probabilities.
    """
    dtype = torch.float32
    for t in logits:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _map_rows(
    fn: Callable[..., Tensor | tuple[Tensor, ...]],
    tensors: tuple[Tensor, ...],
    chunk_size: int,
) -> tuple[Tensor, ...]:
    """Apply ``fn`` to row chunks of ``(..., V)`` / ``(...)`` tensors; concatenate the results.

    ``...`` may be empty (a single ``(V,)`` position): it runs as one row and the results lose
    the row dim again.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    lead = tensors[0].shape[:-1]
    rows = [t.reshape(lead.numel(), *t.shape[len(lead) :]) for t in tensors]
    pieces: list[tuple[Tensor, ...]] = []
    for start in range(0, max(lead.numel(), 1), chunk_size):
        out = fn(*(r[start : start + chunk_size] for r in rows))
        pieces.append(out if isinstance(out, tuple) else (out,))
    return tuple(
        torch.cat([p[i] for p in pieces]).reshape((*lead, *pieces[0][i].shape[1:]))
        for i in range(len(pieces[0]))
    )


def token_logprobs(logits: Tensor, ids: Tensor) -> Tensor:
    """``log softmax(logits)[ids]`` -> ``(...)`` without a ``(..., V)`` log-softmax copy.

    ``logits`` ``(..., V)``, ``ids`` ``(...)``. Differentiable: ``logit - logsumexp``.
    """
    picked = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def map_rows_checkpointed(
    fn: Callable[..., Tensor],
    chunk_size: int,
    first: Tensor,
    *others: Tensor,
    recompute: bool = True,
) -> Tensor:
    """Apply a per-row function over row chunks of ``(N, ...)`` tensors -> ``(N,)``.

    With grad (``first`` requires it) and ``recompute``, each chunk runs under non-reentrant
    activation checkpointing: backward keeps only the chunk inputs (views) and recomputes one
    chunk at a time, so the fp32 upcast a chunk makes is never kept for backward; extra memory
    stays O(chunk_size x V) in both passes, at the cost of recomputing the reduction (not the
    model).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    needs_grad = recompute and torch.is_grad_enabled() and first.requires_grad
    pieces = []
    for chunk in zip(first.split(chunk_size), *(o.split(chunk_size) for o in others), strict=True):
        if needs_grad:
            pieces.append(cast(Tensor, checkpoint(fn, *chunk, use_reentrant=False)))
        else:
            pieces.append(fn(*chunk))
    if not pieces:  # no rows: an empty (0,) result still connected to ``first``
        return first.to(_compute_dtype(first)).sum(-1) * 0.0
    return torch.cat(pieces)


def sampled_logprobs(logits: Tensor, ids: Tensor, *, chunk_size: int = 1024) -> Tensor:
    """``log softmax(logits)[ids]`` ``(...)`` in at least float32, differentiable, in row chunks.

    The trainer's log-prob of the sampled token from a micro-batch's ``(..., V)`` logits: each
    chunk is upcast on its own (bf16 logits never get a whole fp32 copy), and with grad an
    upcast chunk is recomputed in backward rather than kept.
    """
    dtype = _compute_dtype(logits)
    v = logits.shape[-1]

    def rows(lg: Tensor, idx: Tensor) -> Tensor:
        lg = lg.to(dtype)
        return lg.gather(-1, idx[:, None]).squeeze(-1) - torch.logsumexp(lg, dim=-1)

    out = map_rows_checkpointed(
        rows,
        chunk_size,
        logits.reshape(-1, v),
        ids.reshape(-1),
        recompute=logits.dtype != dtype,
    )
    return out.reshape(ids.shape)


@torch.no_grad()
def entropy_from_logits(logits: Tensor, *, chunk_size: int = 1024) -> Tensor:
    """Entropy (nats) of ``softmax(logits)`` ``(..., V)`` -> ``(...)``, in row chunks; detached."""
    dtype = _compute_dtype(logits)

    def chunk(lg: Tensor) -> Tensor:
        logp = torch.log_softmax(lg.to(dtype), dim=-1)
        return -(logp.exp() * torch.where(logp.isneginf(), 0.0, logp)).sum(-1)

    (out,) = _map_rows(chunk, (logits,), chunk_size)
    return out


@torch.no_grad()
def topk_logprobs(logits: Tensor, k: int, *, chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Top-k ``(ids, log-probs)`` of ``softmax(logits)``, each ``(..., k)``; detached.

    Log-probs in the logits' dtype, at least float32.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    dtype = _compute_dtype(logits)

    def chunk(lg: Tensor) -> tuple[Tensor, Tensor]:
        lg = lg.to(dtype)
        vals, ids = lg.topk(min(k, lg.shape[-1]), dim=-1)
        return ids, vals - torch.logsumexp(lg, dim=-1, keepdim=True)

    ids, logp = _map_rows(chunk, (logits,), chunk_size)
    return ids, logp


@torch.no_grad()
def gather_logprobs(logits: Tensor, ids: Tensor, *, chunk_size: int = 1024) -> Tensor:
    """``log softmax(logits)`` at ``ids`` ``(..., m)`` -> ``(..., m)``, in row chunks; detached.

    The candidate-set log-probs of the top-k normaliser, without a ``(..., V)`` log-softmax copy.
    """
    dtype = _compute_dtype(logits)

    def chunk(lg: Tensor, idx: Tensor) -> Tensor:
        lg = lg.to(dtype)
        return lg.gather(-1, idx) - torch.logsumexp(lg, dim=-1, keepdim=True)

    (out,) = _map_rows(chunk, (logits, ids), chunk_size)
    return out


@torch.no_grad()
def normalizer_from_logits(
    logits_target: Tensor,
    logits_inf: Tensor,
    lam: float | Tensor | None = None,
    *,
    log_lam: float | Tensor | None = None,
    chunk_size: int = 1024,
) -> Tensor:
    """Exact ``Z(lam)`` per position from ``(..., V)`` logits, in row chunks -> ``(...)``.

    Exactly one of ``lam`` / ``log_lam`` (scalar or per position ``(...)``), as in
    :func:`~jackpot.functional.obrs.log_normalizer`; ``log_lam`` reaches thresholds below the
    float range. Result in the logits' dtype, at least float32.
    """
    if (lam is None) == (log_lam is None):
        raise ValueError("pass exactly one of lam and log_lam")
    in_log = log_lam is not None
    dtype = _compute_dtype(logits_target, logits_inf)
    value = torch.as_tensor(log_lam if in_log else lam, dtype=dtype, device=logits_target.device)
    value_rows = value.expand(logits_target.shape[:-1]).unsqueeze(-1)  # (..., 1)

    def chunk(lt: Tensor, li: Tensor, v: Tensor) -> Tensor:
        lp_t = torch.log_softmax(lt.to(dtype), dim=-1)
        lp_i = torch.log_softmax(li.to(dtype), dim=-1)
        v = v.squeeze(-1)
        log_z = log_normalizer(lp_t, lp_i, log_lam=v) if in_log else log_normalizer(lp_t, lp_i, v)
        return log_z.exp()

    (z,) = _map_rows(chunk, (logits_target, logits_inf, value_rows), chunk_size)
    return z


@torch.no_grad()
def max_log_ratio_from_logits(
    logits_target: Tensor, logits_inf: Tensor, *, chunk_size: int = 1024
) -> Tensor:
    """``log max_x p_target(x)/p_inf(x)`` per position -> ``(...)``; ``+inf`` if p_inf misses mass.

    The bound ``M`` of classic rejection sampling (``lam = M`` makes ``p_obrs = p_target``).
    Result in the logits' dtype, at least float32.
    """
    dtype = _compute_dtype(logits_target, logits_inf)

    def chunk(lt: Tensor, li: Tensor) -> Tensor:
        lp_t = torch.log_softmax(lt.to(dtype), dim=-1)
        lp_i = torch.log_softmax(li.to(dtype), dim=-1)
        ratio = torch.where(
            lp_t == float("-inf"), torch.full_like(lp_t, float("-inf")), lp_t - lp_i
        )
        return ratio.amax(dim=-1)

    (m,) = _map_rows(chunk, (logits_target, logits_inf), chunk_size)
    return m
