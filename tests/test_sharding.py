"""The FSDP2 pieces on one process (a one-rank gloo mesh): the strategy Lightning gets, the
per-layer sharding of both models, the mixed-precision policy and the clip of DTensor
gradients. Two processes, the whole RL step and its checkpoints: ``tests/test_distributed.py``."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from jackpot.models import ModelSpec, build_model
from jackpot.training.sharding import (
    clip_grad_norm,
    decoder_layer_classes,
    fsdp_strategy,
    fsdp_trainer_precision,
    mixed_precision_policy,
    shard_models,
)


def _models() -> tuple[torch.nn.Module, torch.nn.Module]:
    policy = build_model(ModelSpec(vocab_size=24, family="qwen2", hidden_size=16, num_layers=2))
    rollout = build_model(ModelSpec(vocab_size=24, family="llama", hidden_size=8, num_layers=1))
    return policy, rollout


def test_fsdp_strategy_is_data_parallel_model_parallel_with_full_checkpoints() -> None:
    from lightning.pytorch.strategies import ModelParallelStrategy

    strategy = fsdp_strategy(8)
    assert isinstance(strategy, ModelParallelStrategy)
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == (8, 1)
    assert strategy._save_distributed_checkpoint is False  # one file on rank 0


def test_bf16_mixed_is_fsdp2s_policy_not_autocast() -> None:
    policy = mixed_precision_policy("bf16-mixed")
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert fsdp_trainer_precision("bf16-mixed") == "32-true"
    assert mixed_precision_policy("32-true").param_dtype is None
    assert fsdp_trainer_precision("bf16-true") == "bf16-true"


def test_every_decoder_layer_of_both_models_is_its_own_unit(cpu_mesh: Any) -> None:
    policy, rollout = _models()
    shard_models([policy, rollout], cpu_mesh, "32-true")
    for model in (policy, rollout):
        assert isinstance(model, FSDPModule)
        assert all(isinstance(layer, FSDPModule) for layer in model.model.layers)
        assert all(isinstance(p, DTensor) for p in model.parameters())
    assert not {id(p) for p in policy.parameters()} & {id(p) for p in rollout.parameters()}


def test_models_without_known_layers_are_refused() -> None:
    policy, _ = _models()
    assert decoder_layer_classes([policy, None]) == {type(policy.model.layers[0])}
    with pytest.raises(ValueError, match="decoder-layer classes"):
        decoder_layer_classes([torch.nn.Linear(2, 2)])


def test_clip_of_dtensor_gradients_equals_the_clip_of_the_whole_gradient(cpu_mesh: Any) -> None:
    """The norm comes back as a plain tensor, the gradients are scaled as unsharded ones."""
    g = torch.Generator().manual_seed(0)
    whole = [torch.nn.Parameter(torch.zeros(6, 4)), torch.nn.Parameter(torch.zeros(5))]
    for p in whole:
        p.grad = torch.randn(p.shape, generator=g) * 3
    sharded = []
    for p in whole:
        s = torch.nn.Parameter(distribute_tensor(torch.zeros_like(p), cpu_mesh, [Shard(0)]))
        s.grad = distribute_tensor(p.grad.clone(), cpu_mesh, [Shard(0)])
        sharded.append(s)
    norm = clip_grad_norm(sharded, 1.0)
    reference = clip_grad_norm(whole, 1.0)
    assert type(norm) is torch.Tensor and reference > 1.0
    torch.testing.assert_close(norm, reference)
    for p, s in zip(whole, sharded, strict=True):
        torch.testing.assert_close(s.grad.full_tensor(), p.grad)
