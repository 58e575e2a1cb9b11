"""``tis``: truncated IS ``min(p_ref/p_inf, cap)`` per token (Flash-RL, verl ``token_tis``)."""

from __future__ import annotations

import math

from jackpot.functional import tis_weight
from jackpot.samplers.base import Sampler, SamplerInput, SamplerOutput, check_range


class TruncatedIS(Sampler):
    """Truncated from above only, as verl does; ``cap`` trades bias for variance."""

    name = "tis"

    def __init__(self, cap: float = 2.0) -> None:
        self.cap = check_range(self.name, "cap", cap, low=0.0, high=math.inf, high_open=True)

    def sample(self, batch: SamplerInput) -> SamplerOutput:
        """Weight every response token by its truncated ratio."""
        mask = batch.response_mask
        return SamplerOutput(mask, tis_weight(batch.logp_ref, batch.logp_inf, self.cap), mask)
