"""Choose and build the rollout engine a run's config asks for (``rollout.engine``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from torch import nn

from jackpot.config import RolloutConfig
from jackpot.rollout.engine import RolloutEngine, SamplingParams

__all__ = ["build_engine", "sampling_params"]


def sampling_params(
    rollout: RolloutConfig, stop_token_id: int, logprobs_k: int | None = None
) -> SamplingParams:
    """The sampling distribution a run's ``rollout.*`` keys define, stopping at
    ``stop_token_id``; ``logprobs_k`` overrides ``rollout.logprobs_k``."""
    return SamplingParams(
        temperature=rollout.temperature,
        top_k=rollout.top_k,
        top_p=rollout.top_p,
        max_new_tokens=rollout.max_new_tokens,
        stop_token_ids=(stop_token_id,),
        logprobs_k=rollout.logprobs_k if logprobs_k is None else logprobs_k,
    )


def build_engine(
    rollout: RolloutConfig, model: nn.Module, pad_token_id: int, work_dir: str | Path
) -> RolloutEngine:
    """An engine sampling from ``model``: the transformers loop, or vLLM on a saved copy.

    Build one per model and run, not per step: vLLM starts in seconds to minutes. ``work_dir``
    receives the vLLM engine's copy of the model (``save_pretrained``); the HF engine ignores
    it. A vLLM engine then holds its own weights: call ``sync_weights`` after they change.
    """
    if rollout.engine == "hf":
        from jackpot.rollout.hf import HFRolloutEngine

        return HFRolloutEngine(cast(Any, model), pad_token_id)
    if rollout.engine == "vllm":
        from jackpot.rollout.vllm import VLLMRolloutEngine

        options = rollout.vllm
        return VLLMRolloutEngine.from_model(
            model,
            work_dir,
            pad_token_id,
            max_logprobs=rollout.logprobs_k,
            gpu_memory_utilization=options.gpu_memory_utilization,
            kv_cache_memory_gib=options.kv_cache_memory_gib,
            max_model_len=options.max_model_len,
            tensor_parallel_size=options.tensor_parallel_size,
            dtype=options.dtype,
            enforce_eager=options.enforce_eager,
        )
    raise ValueError(f"rollout.engine={rollout.engine!r} is not allowed; choose 'hf' or 'vllm'")
