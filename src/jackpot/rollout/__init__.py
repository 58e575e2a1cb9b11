"""Rollouts: the engine interface, the transformers engine, ``RolloutBatch`` and its file format.

Importing this package pulls in torch and safetensors only; ``HFRolloutEngine`` (transformers)
is imported on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jackpot.rollout.batch import RolloutBatch, RolloutFormatError, left_pad
from jackpot.rollout.engine import RolloutEngine, SamplingParams
from jackpot.rollout.io import load_rollouts, save_rollouts
from jackpot.rollout.sampling import sample_tokens, sampling_logprobs, topk_with_sampled

if TYPE_CHECKING:
    from jackpot.rollout.hf import HFRolloutEngine

__all__ = [
    "HFRolloutEngine",
    "RolloutBatch",
    "RolloutEngine",
    "RolloutFormatError",
    "SamplingParams",
    "left_pad",
    "load_rollouts",
    "sample_tokens",
    "sampling_logprobs",
    "save_rollouts",
    "topk_with_sampled",
]


def __getattr__(name: str) -> Any:
    """Import the transformers engine lazily, so the torch-only parts stay light."""
    if name == "HFRolloutEngine":
        from jackpot.rollout.hf import HFRolloutEngine

        return HFRolloutEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
