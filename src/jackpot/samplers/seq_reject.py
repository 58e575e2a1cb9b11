"""``seq_reject``: drop sequences whose summed, mean or largest token divergence leaves its
bound (verl's ``seq_sum_k*``, ``seq_mean_k*``, ``seq_max_k2/k3``).

Bounds as ``token_reject``: k1 on the ratio (the product of the token ratios for ``sum``, their
geometric mean for ``mean``, which is ``geo_mask``), k2 / k3 by ``threshold``.
"""

from __future__ import annotations

import torch

from jackpot.functional import SEQ_REDUCTIONS, seq_reduce, token_divergence
from jackpot.samplers.base import (
    SamplerInput,
    SamplerOutput,
    SamplerParameterError,
    check_choice,
)
from jackpot.samplers.token_reject import TokenRejection


class SequenceRejection(TokenRejection):
    """Hard trust region per sequence; kept tokens have weight 1."""

    name = "seq_reject"

    def __init__(
        self,
        reduce: str = "mean",
        estimator: str = "k1",
        threshold: float | None = None,
        alpha: float | None = None,
        beta: float | None = None,
    ) -> None:
        super().__init__(estimator, threshold, alpha, beta)
        self.reduce = check_choice(self.name, "reduce", reduce, SEQ_REDUCTIONS)
        if reduce == "max" and estimator == "k1":
            raise SamplerParameterError(
                "reduce='max' needs estimator 'k2' or 'k3' (the largest k1 bounds one side "
                "only; verl has no seq_max_k1)",
                sampler=self.name,
                parameters=("reduce", "estimator"),
            )

    def sample(self, batch: SamplerInput) -> SamplerOutput:
        """Keep whole sequences whose reduced divergence is inside the bound."""
        resp = batch.response_mask
        token = token_divergence(batch.logp_ref, batch.logp_inf, self.estimator)
        stat = seq_reduce(token, resp, self.reduce)
        mask = self.keep(stat).to(resp.dtype).unsqueeze(-1) * resp
        return SamplerOutput(mask, torch.ones_like(mask), mask)
