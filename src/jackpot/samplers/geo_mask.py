"""``geo_mask``: drop a sequence whose geometric-mean ratio leaves ``[alpha, beta]``.

verl 0.9.1's ``seq_mean_k1`` rejection: the same clamped statistic, but verl bounds
``k1 = -mean log ratio``, so its band ``lower_upper`` is our ``[1/upper, 1/lower]`` (identical
for symmetric bands such as the default ``[0.5, 2]``). See ``docs/math.md``.
"""

from __future__ import annotations

import math

import torch

from jackpot.functional import geo_mean_log_ratio
from jackpot.samplers.base import (
    Sampler,
    SamplerInput,
    SamplerOutput,
    check_band,
)


class GeometricMask(Sampler):
    """Sequence rejection by the mean token log-ratio; kept tokens have weight 1."""

    name = "geo_mask"

    def __init__(self, alpha: float = 0.5, beta: float = 2.0) -> None:
        self.alpha, self.beta = check_band(self.name, alpha, beta)

    def sample(self, batch: SamplerInput) -> SamplerOutput:
        """Keep sequences with ``log alpha <= mean_t log ratio <= log beta``.

        Each token's log-ratio ``log p_ref - log p_inf`` is clamped to +-20 before the mean (verl).
        """
        g = geo_mean_log_ratio(batch.logp_ref, batch.logp_inf, batch.response_mask)  # (B,)
        keep = (g >= math.log(self.alpha)) & (g <= math.log(self.beta))
        mask = keep.to(batch.response_mask.dtype).unsqueeze(-1) * batch.response_mask
        return SamplerOutput(mask, torch.ones_like(mask), mask)
