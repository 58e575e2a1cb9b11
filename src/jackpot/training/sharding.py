"""Multi-device pieces the Trainer needs from us: the FSDP strategy for two models, and a
gradient-norm clip that is right when every rank holds only a shard of each gradient.

Lightning's ``strategy="fsdp"`` string wraps the LightningModule with no auto-wrap policy: the
policy and the rollout model would then sit in one root flat parameter, which the two
optimisers cannot split. We wrap each decoder layer (the classes the models name in
``_no_split_modules``) and keep the original parameters visible (``use_orig_params``), so each
optimiser sees its own model's parameters and a checkpoint holds them under their own names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["clip_grad_norm", "decoder_layer_classes", "fsdp_strategy"]


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


def fsdp_strategy(models: Sequence[nn.Module | None], **kwargs: Any) -> Any:
    """Lightning's FSDP strategy sharding both models layer by layer (full-state checkpoints,
    which resume like unsharded ones)."""
    from lightning.pytorch.strategies import FSDPStrategy

    return FSDPStrategy(
        auto_wrap_policy=decoder_layer_classes(models),
        use_orig_params=True,
        state_dict_type="full",
        **kwargs,
    )


def clip_grad_norm(
    params: Iterable[Tensor],
    max_norm: float,
    all_reduce_sum: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Scale gradients so their global L2 norm is at most ``max_norm``; return that norm.

    ``all_reduce_sum`` sums a scalar over the ranks when each holds a shard of the gradients
    (FSDP): the squared norms of the shards add up to the squared norm of the whole, which
    ``torch.nn.utils.clip_grad_norm_`` on one rank's shards would miss. None: unsharded.
    """
    with_grad = [p for p in params if p.grad is not None]
    if all_reduce_sum is None:
        return torch.nn.utils.clip_grad_norm_(with_grad, max_norm)
    grads = [p.grad for p in with_grad if p.grad is not None]
    sq = (
        torch.stack([g.detach().float().pow(2).sum() for g in grads]).sum()
        if grads
        else torch.zeros(())
    )
    total = all_reduce_sum(sq).sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.to(g.dtype))
    return total
