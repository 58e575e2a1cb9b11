"""``icepop``: keep tokens whose ratio ``p_ref/p_inf`` lies in ``[alpha, beta]`` (IcePop)."""

from __future__ import annotations

import math

from jackpot.functional import icepop_mask, is_weight
from jackpot.samplers.base import (
    Sampler,
    SamplerInput,
    SamplerOutput,
    SamplerParameterError,
    check_range,
)


class IcePop(Sampler):
    """``F(x) = x`` inside the band, else the token is masked (and leaves the denominator)."""

    name = "icepop"

    def __init__(self, alpha: float = 0.5, beta: float = 2.0) -> None:
        self.alpha = check_range(self.name, "alpha", alpha, low=0.0, high=1.0, low_open=False)
        self.beta = check_range(self.name, "beta", beta, low=1.0, high=math.inf, low_open=False)
        if self.alpha >= self.beta:
            raise SamplerParameterError(
                f"alpha={alpha!r} must be < beta={beta!r}",
                sampler=self.name,
                parameters=("alpha", "beta"),
            )

    def sample(self, batch: SamplerInput) -> SamplerOutput:
        """Mask tokens outside the band; weight the rest by their ratio."""
        keep = icepop_mask(batch.logp_ref, batch.logp_inf, self.alpha, self.beta)
        mask = keep * batch.response_mask
        return SamplerOutput(mask, is_weight(batch.logp_ref, batch.logp_inf), mask)
