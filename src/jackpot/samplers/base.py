"""The ``Sampler`` interface: per-token quantities in, 0/1 mask and detached weights out.

A sampler never sees a model, only tensors, so the same code runs on logits from
transformers, on a rollout file written by another engine, or on a test's numbers.
"""

from __future__ import annotations

import math
import numbers
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import ClassVar, Literal

import torch
from torch import Tensor

from jackpot.functional import (
    chi2_seq,
    chi2_token,
    effective_sample_size,
    kl_k1,
    kl_k3,
    log_perplexity,
    masked_mean,
)
from jackpot.interval import Interval

__all__ = [
    "Sampler",
    "SamplerInput",
    "SamplerOutput",
    "SamplerParameterError",
    "check_choice",
    "check_flag",
    "check_range",
]

PTarget = Literal["ref", "new"]


class SamplerParameterError(ValueError):
    """A sampler parameter is outside its allowed range; the message names both.

    ``problem`` is the message without the ``sampler 'name': `` prefix; ``parameters`` are the
    parameter names it mentions, so a config can spell them as its keys (:meth:`as_keys`).
    """

    def __init__(
        self, problem: str, *, sampler: str | None = None, parameters: tuple[str, ...] = ()
    ) -> None:
        """``SamplerParameterError("...")`` (any message) or with the sampler and parameters."""
        super().__init__(problem if sampler is None else f"sampler {sampler!r}: {problem}")
        self.problem = problem
        self.parameters = parameters

    def as_keys(self, section: str) -> str:
        """The problem with each parameter written as a key: ``lam=0`` -> ``sampler.lam=0``."""
        if not self.parameters:
            return str(self)
        names = "|".join(re.escape(p) for p in self.parameters)
        return re.sub(rf"(?<![\w.'\"])({names})(?![\w'\"])", rf"{section}.\1", self.problem)


def check_range(
    sampler: str,
    name: str,
    value: float,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = True,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float, or raise naming the parameter, the value and its range.

    Only real numbers pass: a bool (``cap=True``) or a string would otherwise become 1.0 or a
    bare ``ValueError`` from ``float()``.
    """
    allowed = Interval(low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SamplerParameterError(
            f"{name}={value!r} is a {type(value).__name__}, not a number; "
            f"allowed {name} in {allowed}",
            sampler=sampler,
            parameters=(name,),
        )
    if value not in allowed:
        raise SamplerParameterError(
            f"{name}={value!r} is out of range; allowed {name} in {allowed}",
            sampler=sampler,
            parameters=(name,),
        )
    return float(value)


def check_choice(sampler: str, name: str, value: str, allowed: tuple[str, ...]) -> str:
    """Return ``value``, or raise naming the parameter, the value and the allowed choices."""
    if value not in allowed:
        raise SamplerParameterError(
            f"{name}={value!r} is not allowed; choose one of {list(allowed)}",
            sampler=sampler,
            parameters=(name,),
        )
    return value


def check_band(
    sampler: str, alpha: float, beta: float, *, alpha_low_open: bool = True
) -> tuple[float, float]:
    """``(alpha, beta)`` of a ratio band ``alpha <= ratio <= beta`` with ``alpha`` in (0, 1]
    (``[0, 1]`` when not ``alpha_low_open``), ``beta >= 1`` and ``alpha < beta``; else raise."""
    low = check_range(sampler, "alpha", alpha, low=0.0, high=1.0, low_open=alpha_low_open)
    high = check_range(sampler, "beta", beta, low=1.0, high=math.inf, low_open=False)
    if low >= high:
        raise SamplerParameterError(
            f"alpha={alpha!r} must be < beta={beta!r}",
            sampler=sampler,
            parameters=("alpha", "beta"),
        )
    return low, high


def check_flag(sampler: str, name: str, value: bool) -> bool:
    """Return ``value`` if it is a bool, else raise naming the parameter (``1`` is not ``True``)."""
    if not isinstance(value, bool):
        raise SamplerParameterError(
            f"{name}={value!r} is a {type(value).__name__}; allowed: true, false",
            sampler=sampler,
            parameters=(name,),
        )
    return value


@dataclass
class SamplerInput:
    """Per-token quantities of one batch of rollouts; ``(B, T)`` unless stated.

    Log-probs are of the *sampled* token ``a_t``: under ``p_inf`` (the distribution it was
    really drawn from), ``p_ref`` (policy before the update) and ``p_target`` (what OBRS aligns
    to: ``p_ref`` or the detached ``p_new``). Optional extras feed the normaliser ``Z``:
    ``topk_*`` ``(B, T, m)`` the candidate set ``topk(p_inf) ∪ topk(p_new)`` with both
    log-probs (``-inf`` where p_inf is unknown), or full ``logits_*`` ``(B, T, V)`` of the
    sampling distribution of ``p_inf`` and of ``p_target`` for the exact paths.
    """

    logp_inf: Tensor
    logp_ref: Tensor
    logp_target: Tensor
    response_mask: Tensor
    topk_ids: Tensor | None = None
    topk_logp_inf: Tensor | None = None
    topk_logp_target: Tensor | None = None
    logits_inf: Tensor | None = None
    logits_target: Tensor | None = None
    generator: torch.Generator | None = None

    def validate(self) -> None:
        """Check shapes agree and masks are 0/1; raise ``ValueError`` naming the field."""
        shape = self.logp_inf.shape
        if len(shape) != 2:
            raise ValueError(f"logp_inf must be (B, T), got shape {tuple(shape)}")
        for f in ("logp_ref", "logp_target", "response_mask"):
            t = getattr(self, f)
            if t.shape != shape:
                raise ValueError(f"{f} must have shape {tuple(shape)}, got {tuple(t.shape)}")
        m = self.response_mask
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("response_mask must hold only 0 and 1")
        topk = [getattr(self, f.name) for f in fields(self) if f.name.startswith("topk_")]
        if any(t is not None for t in topk):
            if any(t is None for t in topk):
                raise ValueError("topk_ids, topk_logp_inf and topk_logp_target go together")
            for f in ("topk_ids", "topk_logp_inf", "topk_logp_target"):
                t = getattr(self, f)
                if t.shape[:2] != shape or t.shape != topk[0].shape:
                    raise ValueError(f"{f} must have shape (B, T, m) = {tuple(shape)} + (m,)")
        for f in ("logits_inf", "logits_target"):
            t = getattr(self, f)
            if t is not None and t.shape[:2] != shape:
                raise ValueError(f"{f} must have shape (B, T, V) with (B, T) = {tuple(shape)}")


@dataclass
class SamplerOutput:
    """What a sampler decides for a batch; all ``(B, T)`` and detached.

    ``mask``: 1 for tokens that enter the loss (accepted and inside the response);
    ``weights``: the per-token weight ``rho_t`` (0 where ``mask`` is 0);
    ``norm_mask``: the positions the loss is normalised by (accepted tokens, or every
    proposed response token for the unbiased "proposal" aggregation);
    ``metrics``: scalar tensors under namespaced keys (``obrs/accept_rate``, ...).
    """

    mask: Tensor
    weights: Tensor
    norm_mask: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)

    def select(self, index: Tensor) -> SamplerOutput:
        """Rows ``index`` of the per-token tensors (a minibatch); metrics stay batch-level."""
        return SamplerOutput(
            self.mask[index], self.weights[index], self.norm_mask[index], dict(self.metrics)
        )


class Sampler(ABC):
    """Base class: validates the input, calls :meth:`sample`, detaches, adds shared metrics.

    Subclasses set ``name`` and implement :meth:`sample`; their ``__init__`` takes the
    parameters by keyword and checks them with :func:`check_range`. ``p_target`` says which
    policy the trainer passes as ``logp_target``; ``"new"`` means the sampler is re-run for
    every minibatch with the current (detached) policy (paper, Algorithm 1).
    """

    name: ClassVar[str] = "sampler"
    p_target: PTarget = "ref"

    def __call__(self, batch: SamplerInput) -> SamplerOutput:
        """Run the sampler on ``batch`` and return mask, weights and metrics, all detached."""
        batch.validate()
        with torch.no_grad():
            out = self.sample(batch)
            mask = out.mask.to(batch.logp_inf.dtype) * batch.response_mask
            weights = torch.nan_to_num(out.weights.detach(), nan=0.0, posinf=0.0) * mask
            metrics = {
                "sampler/keep_rate": masked_mean(mask, batch.response_mask),
                "weights/mean": masked_mean(weights, mask),
                "weights/max": weights.max() if weights.numel() else weights.new_zeros(()),
                "weights/ess": effective_sample_size(weights, mask),
                "mismatch/kl_k1": masked_mean(
                    kl_k1(batch.logp_inf, batch.logp_target), batch.response_mask
                ),
                "mismatch/kl_k3": masked_mean(
                    kl_k3(batch.logp_inf, batch.logp_target), batch.response_mask
                ),
                **_offpolicy_metrics(batch),
            }
            metrics.update({k: v.detach() for k, v in out.metrics.items()})
        return SamplerOutput(mask, weights, out.norm_mask.to(mask.dtype).detach(), metrics)

    def needs(self) -> frozenset[str]:
        """Optional inputs this sampler requires: ``"logits"`` (full) and/or ``"topk"``."""
        return frozenset()

    def topk_k(self) -> int:
        """How many top p_target tokens join the candidate set (samplers that need ``topk``)."""
        raise NotImplementedError(f"sampler {self.name!r} does not use top-k candidates")

    @abstractmethod
    def sample(self, batch: SamplerInput) -> SamplerOutput:
        """Decide mask, weights and normaliser positions for a validated batch."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


def _offpolicy_metrics(batch: SamplerInput) -> dict[str, Tensor]:
    """verl's off-policy diagnostics of ``p_target`` against ``p_inf``: the policy's
    perplexity (mean over sequences of the per-sequence one, and of its log) and the
    chi-square divergences of the token and sequence ratios."""
    mask = batch.response_mask
    rows = (mask != 0).any(-1)
    log_ppl = log_perplexity(batch.logp_target, mask)  # (B,)
    return {
        "mismatch/training_ppl": masked_mean(log_ppl.exp(), rows),
        "mismatch/training_log_ppl": masked_mean(log_ppl, rows),
        "mismatch/chi2_token": chi2_token(batch.logp_target, batch.logp_inf, mask),
        "mismatch/chi2_seq": chi2_seq(batch.logp_target, batch.logp_inf, mask),
    }
