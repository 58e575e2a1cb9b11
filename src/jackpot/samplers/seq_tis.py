"""``seq_tis``: one truncated weight per sequence, ``min(prod_t p_ref/p_inf, cap)`` (verl)."""

from __future__ import annotations

import math

from jackpot.functional import mean_normalize, seq_log_ratio
from jackpot.samplers.base import Sampler, SamplerInput, SamplerOutput, check_flag, check_range


class SequenceTIS(Sampler):
    """Sequence-level truncated IS: the sum of the raw log-ratios is clamped to +-20, then exp.

    ``normalize``: divide by the mean weight of the batch's non-empty sequences (verl's
    ``rollout_is_batch_normalize`` at sequence level), so they average 1.
    """

    name = "seq_tis"

    def __init__(self, cap: float = 2.0, normalize: bool = False) -> None:
        self.cap = check_range(self.name, "cap", cap, low=0.0, high=math.inf, high_open=True)
        self.normalize = check_flag(self.name, "normalize", normalize)

    def sample(self, batch: SamplerInput) -> SamplerOutput:
        """Broadcast each sequence's truncated (and maybe normalised) ratio over its tokens."""
        mask = batch.response_mask
        log_w = seq_log_ratio(batch.logp_ref, batch.logp_inf, mask)  # (B,), clamped to +-20
        w_seq = log_w.exp().clamp(max=self.cap)
        metrics = {}
        if self.normalize:
            w_seq, metrics["weights/batch_norm_factor"] = mean_normalize(w_seq, mask.any(-1))
        return SamplerOutput(mask, w_seq.unsqueeze(-1).expand_as(mask), mask, metrics)
