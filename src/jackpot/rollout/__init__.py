"""Rollouts: the engine interface, the transformers engine, ``RolloutBatch`` and its file format.

Importing this package pulls in torch and safetensors only; ``HFRolloutEngine`` (transformers)
and ``VLLMRolloutEngine`` (vLLM, an optional extra) are imported on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jackpot.rollout.batch import RolloutBatch, RolloutFormatError, left_pad
from jackpot.rollout.engine import RolloutEngine, SamplingParams
from jackpot.rollout.factory import build_engine
from jackpot.rollout.io import load_rollouts, save_rollouts
from jackpot.rollout.sampling import sample_tokens, sampling_logprobs, topk_with_sampled

if TYPE_CHECKING:
    from jackpot.rollout.hf import HFRolloutEngine
    from jackpot.rollout.vllm import VLLMRolloutEngine

__all__ = [
    "HFRolloutEngine",
    "RolloutBatch",
    "RolloutEngine",
    "RolloutFormatError",
    "SamplingParams",
    "VLLMRolloutEngine",
    "build_engine",
    "left_pad",
    "load_rollouts",
    "sample_tokens",
    "sampling_logprobs",
    "save_rollouts",
    "topk_with_sampled",
]


def __getattr__(name: str) -> Any:
    """Import the engines lazily, so the torch-only parts stay light."""
    if name == "HFRolloutEngine":
        from jackpot.rollout.hf import HFRolloutEngine

        return HFRolloutEngine
    if name == "VLLMRolloutEngine":
        from jackpot.rollout.vllm import VLLMRolloutEngine

        return VLLMRolloutEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
