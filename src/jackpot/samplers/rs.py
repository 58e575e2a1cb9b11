"""``rs``: classic rejection sampling, ``lam = M_t = max_x p_target/p_inf`` per position.

Then ``p_obrs = p_target`` exactly, but the acceptance ``Z_t = 1/M_t`` collapses on large
vocabularies (spec, OBRS). Needs full logits: ``M_t`` is a max over the vocabulary.
"""

from __future__ import annotations

import torch

from jackpot.functional import draw_accept, masked_mean, max_log_ratio_from_logits
from jackpot.samplers.base import Sampler, SamplerInput, SamplerOutput, check_range


class RejectionSampling(Sampler):
    """Exact alignment at any cost in acceptance; accepted tokens have weight 1."""

    name = "rs"

    def __init__(self, chunk_size: int = 1024) -> None:
        self.chunk_size = int(
            check_range(self.name, "chunk_size", chunk_size, low=1, low_open=False)
        )

    def needs(self) -> frozenset[str]:
        """``M_t`` is a max over the vocabulary: full logits."""
        return frozenset({"logits"})

    def sample(self, batch: SamplerInput) -> SamplerOutput:
        """Accept ``a_t`` with probability ``r_t / M_t``; ``M_t = inf`` rejects everything."""
        if batch.logits_inf is None or batch.logits_target is None:
            raise ValueError("sampler 'rs' needs full logits_inf and logits_target (exact path)")
        log_m = max_log_ratio_from_logits(
            batch.logits_target, batch.logits_inf, chunk_size=self.chunk_size
        )  # (B, T)
        log_a = (batch.logp_target - batch.logp_inf - log_m).clamp(max=0.0)
        accept_prob = torch.nan_to_num(log_a.exp(), nan=0.0)
        mask = draw_accept(accept_prob, batch.generator) * batch.response_mask
        metrics = {
            "obrs/accept_rate": masked_mean(mask, batch.response_mask),
            "obrs/z_mean": masked_mean((-log_m).exp(), batch.response_mask),
            "mismatch/kl_k3_after": torch.zeros(()),
        }
        return SamplerOutput(mask, torch.ones_like(mask), mask, metrics)
