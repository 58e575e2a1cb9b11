"""``none``: every response token kept with weight 1 (on-policy, or uncorrected off-policy)."""

from __future__ import annotations

import torch

from jackpot.samplers.base import Sampler, SamplerInput, SamplerOutput


class NoCorrection(Sampler):
    """Weight 1 on every response token: the reference for on-policy runs."""

    name = "none"

    def sample(self, batch: SamplerInput) -> SamplerOutput:
        """Keep the response mask as it is."""
        mask = batch.response_mask
        return SamplerOutput(mask, torch.ones_like(batch.logp_inf), mask)
