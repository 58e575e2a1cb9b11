"""``obrs``: Jackpot's Optimal Budgeted Rejection Sampling (Chen et al., ICLR 2026, eq. 3-8).

Per sampled token: accept with ``a_t = min(1, r_t/lam)``, ``r_t = p_target(a_t)/p_inf(a_t)``;
rejected tokens leave the loss, nothing is resampled. ``lam`` is fixed or solved per batch
so the mean acceptance equals ``budget``. Weight of an accepted token, by aggregation:
``"accepted"`` (paper): ``w_t = Z_t max(lam, r_t)``, for a mean over accepted tokens;
``"proposal"``: ``w_t = max(lam, r_t)``, for a mean over all proposed positions (exactly
unbiased position by position, needs no ``Z``).
Then ``rho_t = min(w_t, c1) min(p_ref/p_target, c2)``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from jackpot.functional import (
    acceptance_prob,
    batch_log_lambda,
    draw_accept,
    kappa,
    kl_floor,
    kl_k1,
    kl_k3,
    kl_k3_reverse,
    log_post_rejection_at,
    log_proposal_weight,
    log_ratio,
    masked_mean,
    normalizer_from_logits,
    sparse_topk_normalizer,
)
from jackpot.samplers.base import (
    PTarget,
    Sampler,
    SamplerInput,
    SamplerOutput,
    SamplerParameterError,
    check_choice,
    check_range,
)

Aggregation = Literal["accepted", "proposal"]
KappaEstimator = Literal["prob", "count"]


class OBRS(Sampler):
    """Jackpot's sampler: fixed ``lam`` or a ``budget``; exact or top-k ``Z`` with ``kappa``.

    ``topk=None`` computes ``Z_t`` exactly from full logits; ``topk=k`` uses the candidate set
    of the input (``topk(p_inf) ∪ topk(p_new)``) and rescales by the batch ``kappa``
    (``kappa_estimator``: ``"prob"`` mean acceptance probability, lower variance; ``"count"``
    the paper's accepted/proposed). The ``"proposal"`` aggregation needs no ``Z``.
    """

    name = "obrs"

    def __init__(
        self,
        lam: float | None = None,
        budget: float | None = None,
        topk: int | None = None,
        p_target: PTarget = "ref",
        c1: float = 5.0,
        c2: float = 5.0,
        aggregation: Aggregation = "accepted",
        kappa_estimator: KappaEstimator = "prob",
        chunk_size: int = 1024,
    ) -> None:
        if (lam is None) == (budget is None):
            both = (
                f"lam={lam!r} and budget={budget!r} are mutually exclusive; "
                if budget is not None
                else ""
            )
            raise SamplerParameterError(
                f"{both}set exactly one of lam (> 0) and budget (in (0, 1])",
                sampler=self.name,
                parameters=("lam", "budget"),
            )
        self.lam = (
            None if lam is None else check_range(self.name, "lam", lam, low=0.0, high_open=True)
        )
        self.budget = (
            None if budget is None else check_range(self.name, "budget", budget, low=0.0, high=1.0)
        )
        self.topk = (
            None
            if topk is None
            else int(check_range(self.name, "topk", topk, low=1, low_open=False, high_open=True))
        )
        self.p_target = check_choice(self.name, "p_target", p_target, ("ref", "new"))  # type: ignore[assignment]
        self.c1 = check_range(self.name, "c1", c1, low=0.0)
        self.c2 = check_range(self.name, "c2", c2, low=0.0)
        self.aggregation = check_choice(
            self.name, "aggregation", aggregation, ("accepted", "proposal")
        )
        self.kappa_estimator = check_choice(
            self.name, "kappa_estimator", kappa_estimator, ("prob", "count")
        )
        self.chunk_size = int(
            check_range(self.name, "chunk_size", chunk_size, low=1, low_open=False)
        )

    def needs(self) -> frozenset[str]:
        """Full logits for the exact Z, top-k candidates otherwise (Z also feeds the metrics)."""
        return frozenset({"logits"} if self.topk is None else {"topk"})

    def topk_k(self) -> int:
        """The k of ``topk(p_new)`` in the candidate set."""
        if self.topk is None:
            raise ValueError("sampler 'obrs' uses the exact Z (topk=None)")
        return self.topk

    def sample(self, batch: SamplerInput) -> SamplerOutput:
        """Accept/reject every response token and weight the accepted ones."""
        resp = batch.response_mask
        log_lam = self._log_lambda(batch)
        accept_prob = acceptance_prob(batch.logp_target, batch.logp_inf, log_lam=log_lam) * resp
        mask = draw_accept(accept_prob, batch.generator) * resp
        log_w = log_proposal_weight(batch.logp_target, batch.logp_inf, log_lam=log_lam)
        metrics: dict[str, Tensor] = {
            "obrs/lam": log_lam.exp().to(log_w.dtype),
            "obrs/log_lam": log_lam.to(log_w.dtype),
            "obrs/accept_rate": masked_mean(mask, resp),
            "obrs/accept_prob_mean": masked_mean(accept_prob, resp),
        }
        z = self._normalizer(batch, log_lam, accept_prob, mask, metrics)
        if z is not None:
            log_z = z.log()
            log_p_obrs = log_post_rejection_at(
                batch.logp_target, batch.logp_inf, log_z, log_lam=log_lam
            )
            # Fact 6 bounds KL(p_target || p_inf), estimated from the proposed tokens.
            kl_target_inf = kl_k3_reverse(batch.logp_inf, batch.logp_target)
            metrics.update(
                {
                    "obrs/z_mean": masked_mean(z, resp),
                    "obrs/kl_target_inf": masked_mean(kl_target_inf, resp),
                    "obrs/kl_floor": kl_floor(kl_target_inf, log_z, resp),
                    "mismatch/kl_k1_after": masked_mean(kl_k1(log_p_obrs, batch.logp_target), mask),
                    "mismatch/kl_k3_after": masked_mean(kl_k3(log_p_obrs, batch.logp_target), mask),
                }
            )
        if self.aggregation == "accepted":
            if z is None:
                raise ValueError(
                    "sampler 'obrs' with aggregation='accepted' needs Z: pass full logits "
                    "(topk=None) or top-k candidates (topk=k), or use aggregation='proposal'"
                )
            log_w = log_w + log_z  # w_t = Z_t max(lam, r_t), formed in log space
            norm_mask = mask
        else:
            norm_mask = resp
        c2_factor = log_ratio(batch.logp_ref, batch.logp_target).exp().clamp(max=self.c2)
        rho = log_w.exp().clamp(max=self.c1) * c2_factor
        return SamplerOutput(mask, rho, norm_mask, metrics)

    def _log_lambda(self, batch: SamplerInput) -> Tensor:
        """``log lam``: the fixed one, or the batch one whose mean acceptance is ``budget``.

        In log space because the exact batch ``lam`` can lie below the float range. A batch
        with no response token has no budget to meet; any ``lam`` gives the same empty
        output, and ``lam = 1`` is used.
        """
        if self.lam is not None:
            return torch.tensor(math.log(self.lam), dtype=torch.float64)
        assert self.budget is not None
        if not bool(batch.response_mask.bool().any()):
            return torch.zeros((), dtype=torch.float64)
        log_r = batch.logp_target - batch.logp_inf
        return batch_log_lambda(log_r, batch.response_mask, self.budget)

    def _normalizer(
        self,
        batch: SamplerInput,
        log_lam: Tensor,
        accept_prob: Tensor,
        mask: Tensor,
        metrics: dict[str, Tensor],
    ) -> Tensor | None:
        """``Z_t`` ``(B, T)``: exact from logits, or ``kappa * Z_approx`` from top-k; else None."""
        if self.topk is None:
            if batch.logits_target is None or batch.logits_inf is None:
                return None
            return normalizer_from_logits(
                batch.logits_target, batch.logits_inf, log_lam=log_lam, chunk_size=self.chunk_size
            ).to(batch.logp_inf.dtype)
        if batch.topk_ids is None:
            return None
        assert batch.topk_logp_target is not None and batch.topk_logp_inf is not None
        z_approx = sparse_topk_normalizer(
            batch.topk_ids, batch.topk_logp_target, batch.topk_logp_inf, log_lam=log_lam
        )
        acceptance = accept_prob if self.kappa_estimator == "prob" else mask
        k = kappa(acceptance, z_approx, batch.response_mask)
        metrics["obrs/kappa"] = k
        metrics["obrs/z_approx_mean"] = masked_mean(z_approx, batch.response_mask)
        # kappa * Z_approx estimates Z_t; it cannot exceed 1 (Z is an acceptance rate).
        return (k * z_approx).clamp(min=torch.finfo(z_approx.dtype).tiny, max=1.0)
