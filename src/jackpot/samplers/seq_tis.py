"""``seq_tis``: one truncated weight per sequence, ``min(prod_t p_ref/p_inf, cap)`` (verl)."""

from __future__ import annotations

import math

from jackpot.functional import seq_log_ratio
from jackpot.samplers.base import Sampler, SamplerInput, SamplerOutput, check_range


class SequenceTIS(Sampler):
    """Sequence-level truncated IS: the sum of the raw log-ratios is clamped to +-20, then exp."""

    name = "seq_tis"

    def __init__(self, cap: float = 2.0) -> None:
        self.cap = check_range(self.name, "cap", cap, low=0.0, high=math.inf, high_open=True)

    def sample(self, batch: SamplerInput) -> SamplerOutput:
        """Broadcast each sequence's truncated ratio over its response tokens."""
        mask = batch.response_mask
        log_w = seq_log_ratio(batch.logp_ref, batch.logp_inf, mask)  # (B,), clamped to +-20
        w_seq = log_w.exp().clamp(max=self.cap)
        return SamplerOutput(mask, w_seq.unsqueeze(-1).expand_as(mask), mask)
