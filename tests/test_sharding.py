"""What of sharded training a CPU can test: the FSDP strategy's wrapping of both models and
the gradient-norm clip over shards. torch's FSDP itself refuses a CPU-only process group
("FSDP needs a non-CPU accelerator device") and Lightning refuses ``fsdp`` with
``accelerator=cpu``, so the sharded step and its checkpoints run only on GPUs."""

from __future__ import annotations

import pytest
import torch

from jackpot.models import ModelSpec, build_model
from jackpot.training.sharding import clip_grad_norm, decoder_layer_classes, fsdp_strategy


def _models() -> tuple[torch.nn.Module, torch.nn.Module]:
    policy = build_model(ModelSpec(vocab_size=24, family="qwen2", hidden_size=16, num_layers=2))
    rollout = build_model(ModelSpec(vocab_size=24, family="llama", hidden_size=8, num_layers=1))
    return policy, rollout


def test_fsdp_strategy_wraps_each_decoder_layer_of_both_models() -> None:
    policy, rollout = _models()
    strategy = fsdp_strategy([policy, rollout])
    names = {cls.__name__ for cls in strategy.kwargs["auto_wrap_policy"]._module_classes}
    assert names == {"Qwen2DecoderLayer", "LlamaDecoderLayer"}
    assert strategy.kwargs["use_orig_params"] is True  # one optimiser per model
    assert strategy._state_dict_type == "full"  # resumes like an unsharded checkpoint
    assert decoder_layer_classes([policy, None]) == {type(policy.model.layers[0])}


def test_fsdp_strategy_refuses_models_without_known_layers() -> None:
    with pytest.raises(ValueError, match="decoder-layer classes"):
        decoder_layer_classes([torch.nn.Linear(2, 2)])


def test_clip_over_shards_equals_the_clip_of_the_whole_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    whole = [torch.nn.Parameter(torch.zeros(6, 4)), torch.nn.Parameter(torch.zeros(5))]
    for p in whole:
        p.grad = torch.randn(p.shape, generator=g) * 3
    # Two ranks, each holding half of every gradient (flattened, as FSDP shards).
    shards = [[], []]
    for p in whole:
        for rank, piece in enumerate(p.grad.flatten().chunk(2)):
            s = torch.nn.Parameter(torch.zeros_like(piece))
            s.grad = piece.clone()
            shards[rank].append(s)
    local_sq = [torch.stack([s.grad.pow(2).sum() for s in shard]).sum() for shard in shards]

    def summed(_: torch.Tensor) -> torch.Tensor:  # what an all-reduce of both ranks returns
        return local_sq[0] + local_sq[1]

    norms = [clip_grad_norm(shard, 1.0, summed) for shard in shards]
    reference = clip_grad_norm(whole, 1.0)
    for norm in norms:
        torch.testing.assert_close(norm, reference)
    for p, *pieces in zip(whole, *shards, strict=True):
        torch.testing.assert_close(torch.cat([s.grad for s in pieces]), p.grad.flatten())
    # A shard's own clip would see a smaller norm: that is the bug the reduce prevents.
    assert clip_grad_norm([torch.nn.Parameter(torch.zeros(1))], 1.0) == 0
    assert local_sq[0].sqrt() < reference
