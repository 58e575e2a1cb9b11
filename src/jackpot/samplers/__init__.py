"""Samplers: how tokens from the rollout model are kept and weighted for the policy loss.

Built-ins and third-party samplers are found through the entry-point group
``jackpot.samplers``; :func:`get_sampler` builds one by name.
"""

from jackpot.samplers.base import (
    Sampler,
    SamplerInput,
    SamplerOutput,
    SamplerParameterError,
    check_choice,
    check_flag,
    check_range,
)
from jackpot.samplers.registry import ENTRY_POINT_GROUP, available_samplers, get_sampler

__all__ = [
    "ENTRY_POINT_GROUP",
    "Sampler",
    "SamplerInput",
    "SamplerOutput",
    "SamplerParameterError",
    "available_samplers",
    "check_choice",
    "check_flag",
    "check_range",
    "get_sampler",
]
