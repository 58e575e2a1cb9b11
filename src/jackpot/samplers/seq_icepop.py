"""``seq_icepop``: keep sequences whose ratio ``prod_t p_ref/p_inf`` lies in ``[alpha, beta]``."""

from __future__ import annotations

from jackpot.functional import seq_icepop_mask, seq_log_ratio
from jackpot.samplers.base import (
    Sampler,
    SamplerInput,
    SamplerOutput,
    check_band,
)


class SequenceIcePop(Sampler):
    """IcePop at sequence level: a sequence outside the band is dropped whole; the kept ones
    are weighted by their sequence ratio (clamped to ``exp(+-20)``, as ``seq_tis``)."""

    name = "seq_icepop"

    def __init__(self, alpha: float = 0.5, beta: float = 2.0) -> None:
        self.alpha, self.beta = check_band(self.name, alpha, beta)

    def sample(self, batch: SamplerInput) -> SamplerOutput:
        """Mask sequences outside the band; weight each kept token by its sequence's ratio."""
        resp = batch.response_mask
        keep = seq_icepop_mask(batch.logp_ref, batch.logp_inf, resp, self.alpha, self.beta)
        mask = keep.unsqueeze(-1) * resp
        w_seq = seq_log_ratio(batch.logp_ref, batch.logp_inf, resp).exp()  # (B,)
        return SamplerOutput(mask, w_seq.unsqueeze(-1).expand_as(mask), mask)
