"""Multi-device pieces the Trainer needs from us: FSDP2 sharding of both models through
Lightning's ``ModelParallelStrategy``, and a gradient-norm clip that is right on shards.

``trainer.strategy=fsdp`` is FSDP2 (``torch.distributed.fsdp.fully_shard``): every decoder
layer of the policy and of the rollout model (the classes the models name in
``_no_split_modules``) is its own unit, then each model's root. Parameters become DTensors
sharded over the data-parallel mesh, each model keeps its own parameters (so each optimiser
sees only its model's shards), and checkpoints are full state dicts gathered on rank 0: the
same single file a ddp or one-device run writes, so the atomic write, the ``weights_only``
validation and the newest-valid selection of :mod:`jackpot.training.checkpoints` apply, and a
run resumes on another world size or strategy. It runs on CPU (gloo) and GPU (NCCL) alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "clip_grad_norm",
    "decoder_layer_classes",
    "fsdp_strategy",
    "fsdp_trainer_precision",
    "is_sharded",
    "mixed_precision_policy",
    "shard_models",
]


def decoder_layer_classes(models: Sequence[nn.Module | None]) -> set[type[nn.Module]]:
    """The transformer block classes of ``models`` (``_no_split_modules``), found by name."""
    names = {
        name for m in models if m is not None for name in getattr(m, "_no_split_modules", ()) or ()
    }
    found = {type(sub) for m in models if m is not None for sub in m.modules()}
    classes = {cls for cls in found if cls.__name__ in names}
    missing = names - {cls.__name__ for cls in classes}
    if not classes or missing:
        raise ValueError(
            f"trainer.strategy=fsdp needs the models' decoder-layer classes to shard them; "
            f"found {sorted(c.__name__ for c in classes)}, missing {sorted(missing)}"
        )
    return classes


def fsdp_strategy(world_size: int) -> Any:
    """Lightning's ``ModelParallelStrategy`` as pure data parallelism over ``world_size``
    processes (the module's ``configure_model`` shards), saving full-state checkpoints."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    return ModelParallelStrategy(
        data_parallel_size=world_size, tensor_parallel_size=1, save_distributed_checkpoint=False
    )


def fsdp_trainer_precision(precision: str) -> str:
    """The Trainer's precision under FSDP2: ``bf16-mixed`` is FSDP2's mixed-precision policy
    (:func:`mixed_precision_policy`), not autocast, so the Trainer computes in fp32 around it."""
    return "32-true" if precision == "bf16-mixed" else precision


def mixed_precision_policy(precision: str) -> Any:
    """FSDP2's policy for ``trainer.precision``: ``bf16-mixed`` gathers bf16 copies of the fp32
    sharded parameters for compute and reduces gradients in fp32; otherwise the params' dtype."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "bf16-mixed":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_models(models: Sequence[nn.Module | None], mesh: Any, precision: str) -> None:
    """``fully_shard`` every decoder layer of each model, then the model, in place (FSDP2)."""
    from torch.distributed.fsdp import fully_shard

    layers = tuple(decoder_layer_classes(models))
    policy = mixed_precision_policy(precision)
    for model in models:
        if model is None:
            continue
        for sub in model.modules():
            if isinstance(sub, layers):
                fully_shard(sub, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` went through ``fully_shard`` (its parameters are DTensor shards)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """Scale gradients so their global L2 norm is at most ``max_norm``; return that norm.

    On FSDP2's DTensor gradients torch reduces the shards' squared norms over the mesh, so the
    norm (returned as a plain tensor) is the whole model's on every rank.
    """
    from torch.distributed.tensor import DTensor

    norm = torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm
