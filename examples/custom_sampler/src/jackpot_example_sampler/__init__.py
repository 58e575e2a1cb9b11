"""A third-party sampler: weight each token by its ratio clipped to ``[1/cap, cap]``."""

from __future__ import annotations

import math

from jackpot.functional import is_weight
from jackpot.samplers import Sampler, SamplerInput, SamplerOutput, check_range


class ClippedRatio(Sampler):
    """Two-sided clipped importance weights; every response token is kept."""

    name = "clipped_ratio"

    def __init__(self, cap: float = 2.0) -> None:
        self.cap = check_range(self.name, "cap", cap, low=1.0, high=math.inf, high_open=True)

    def sample(self, batch: SamplerInput) -> SamplerOutput:
        """Clip ``p_ref/p_inf`` into ``[1/cap, cap]``."""
        w = is_weight(batch.logp_ref, batch.logp_inf).clamp(1.0 / self.cap, self.cap)
        return SamplerOutput(batch.response_mask, w, batch.response_mask)
