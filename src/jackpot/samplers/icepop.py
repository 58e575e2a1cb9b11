"""``icepop``: keep tokens whose ratio ``p_ref/p_inf`` lies in ``[alpha, beta]`` (IcePop)."""

from __future__ import annotations

from jackpot.functional import icepop_mask, is_weight
from jackpot.samplers.base import (
    Sampler,
    SamplerInput,
    SamplerOutput,
    check_band,
)


class IcePop(Sampler):
    """``F(x) = x`` inside the band, else the token is masked (and leaves the denominator)."""

    name = "icepop"

    def __init__(self, alpha: float = 0.5, beta: float = 2.0) -> None:
        self.alpha, self.beta = check_band(self.name, alpha, beta, alpha_low_open=False)

    def sample(self, batch: SamplerInput) -> SamplerOutput:
        """Mask tokens outside the band; weight the rest by their ratio."""
        keep = icepop_mask(batch.logp_ref, batch.logp_inf, self.alpha, self.beta)
        mask = keep * batch.response_mask
        return SamplerOutput(mask, is_weight(batch.logp_ref, batch.logp_inf), mask)
