"""``is``: plain token-level importance sampling ``p_ref/p_inf`` (AReaL)."""

from __future__ import annotations

from jackpot.functional import is_weight
from jackpot.samplers.base import Sampler, SamplerInput, SamplerOutput


class ImportanceSampling(Sampler):
    """Unbiased but unbounded weights: the variance baseline the others improve on."""

    name = "is"

    def sample(self, batch: SamplerInput) -> SamplerOutput:
        """Weight every response token by its ratio."""
        mask = batch.response_mask
        return SamplerOutput(mask, is_weight(batch.logp_ref, batch.logp_inf), mask)
