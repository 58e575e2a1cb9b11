"""``tis``: truncated IS ``min(p_ref/p_inf, cap)`` per token (Flash-RL, verl ``token_tis``)."""

from __future__ import annotations

import math

from jackpot.functional import mean_normalize, tis_weight
from jackpot.samplers.base import Sampler, SamplerInput, SamplerOutput, check_flag, check_range


class TruncatedIS(Sampler):
    """Truncated from above only, as verl does; ``cap`` trades bias for variance.

    ``normalize``: divide the truncated weights by their mean over the batch's response tokens
    (verl's ``rollout_is_batch_normalize``), so they average 1.
    """

    name = "tis"

    def __init__(self, cap: float = 2.0, normalize: bool = False) -> None:
        self.cap = check_range(self.name, "cap", cap, low=0.0, high=math.inf, high_open=True)
        self.normalize = check_flag(self.name, "normalize", normalize)

    def sample(self, batch: SamplerInput) -> SamplerOutput:
        """Weight every response token by its truncated (and maybe normalised) ratio."""
        mask = batch.response_mask
        weights = tis_weight(batch.logp_ref, batch.logp_inf, self.cap)
        if not self.normalize:
            return SamplerOutput(mask, weights, mask)
        weights, mean = mean_normalize(weights, mask)
        return SamplerOutput(mask, weights, mask, {"weights/batch_norm_factor": mean})
