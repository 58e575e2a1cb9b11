"""``token_reject``: drop tokens whose divergence estimate leaves its bound (verl's ``token_k*``).

k2 and k3 (``>= 0``) have an upper bound ``threshold``. k1 is bounded on the ratio instead:
keep ``alpha <= p_ref/p_inf <= beta``. verl bounds ``k1 = -log ratio``, so its ``lower_upper``
is ``alpha = 1/upper``, ``beta = 1/lower`` here (docs/math.md).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from jackpot.functional import DIVERGENCE_ESTIMATORS, token_divergence
from jackpot.samplers.base import (
    Sampler,
    SamplerInput,
    SamplerOutput,
    SamplerParameterError,
    check_choice,
    check_range,
)


class TokenRejection(Sampler):
    """Hard trust region per token: rejected tokens leave the loss and its denominator;
    kept tokens have weight 1."""

    name = "token_reject"

    def __init__(
        self,
        estimator: str = "k1",
        threshold: float | None = None,
        alpha: float | None = None,
        beta: float | None = None,
    ) -> None:
        self.estimator = check_choice(self.name, "estimator", estimator, DIVERGENCE_ESTIMATORS)
        self.threshold: float | None = None
        self.alpha: float | None = None
        self.beta: float | None = None
        if estimator == "k1":
            if threshold is not None:
                raise SamplerParameterError(
                    f"estimator='k1' is bounded by alpha/beta (a ratio band), not "
                    f"threshold={threshold!r}",
                    sampler=self.name,
                    parameters=("estimator", "alpha", "beta", "threshold"),
                )
            self.alpha = check_range(
                self.name, "alpha", 0.5 if alpha is None else alpha, low=0.0, high=1.0
            )
            self.beta = check_range(
                self.name, "beta", 2.0 if beta is None else beta, low=1.0, low_open=False
            )
            self._band = (-math.log(self.beta), -math.log(self.alpha))  # on k1 = -log ratio
            return
        if alpha is not None or beta is not None or threshold is None:
            raise SamplerParameterError(
                f"estimator={estimator!r} needs threshold (an upper bound, > 0) and no "
                f"alpha/beta; got threshold={threshold!r}, alpha={alpha!r}, beta={beta!r}",
                sampler=self.name,
                parameters=("estimator", "alpha", "beta", "threshold"),
            )
        self.threshold = check_range(self.name, "threshold", threshold, low=0.0, high=math.inf)
        self._band = (-math.inf, self.threshold)

    def keep(self, stat: Tensor) -> Tensor:
        """Whether ``stat`` (a k1 / k2 / k3 value, of any shape) is inside the bound (bool)."""
        return (stat >= self._band[0]) & (stat <= self._band[1])

    def sample(self, batch: SamplerInput) -> SamplerOutput:
        """Keep the response tokens whose own divergence is inside the bound."""
        stat = token_divergence(batch.logp_ref, batch.logp_inf, self.estimator)
        mask = self.keep(stat).to(batch.response_mask.dtype) * batch.response_mask
        return SamplerOutput(mask, torch.ones_like(mask), mask)
