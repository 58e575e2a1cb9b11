"""KV-cache decoding through the model's own forward: prefill once, then one token a step.

Each distinct prompt is prefilled once and its cache shared across the prompt's group (the
``G`` responses to one prompt start from the same state and first-token logits), and the
caller may drop rows whose response has ended (:meth:`Decode.select`), so later steps compute
only the rows still generating. Any causal LM transformers can cache decodes this way, with
its own attention kernel, and a sharded model's forward gathers its shards itself.
"""

from __future__ import annotations

import inspect
from typing import Any, cast

import torch
from torch import Tensor, nn
from transformers import DynamicCache

__all__ = ["Decode", "cache_kwarg"]


def cache_kwarg(model: nn.Module) -> str:
    """The name ``model``'s forward takes its KV cache under: ``cache`` from transformers 5.24,
    ``past_key_values`` before (a forward ignores a name it does not know, silently)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class Decode:
    """A batch of sequences being decoded (``N = U x G`` at the start) with transformers'
    ``DynamicCache``; :attr:`logits` predict each one's next token.

    Without prompt padding no attention mask is passed at all: every slot is real, and the
    model's forward then builds no mask.
    """

    logits: Tensor
    """``(n, V)`` next-token logits of the ``n`` sequences still in the batch."""

    def __init__(
        self, model: nn.Module, prompts: Tensor, mask: Tensor, group: int, max_new_tokens: int
    ) -> None:
        """Prefill the distinct left-padded prompts ``(U, P)`` and repeat the state ``group``
        times; positions count real tokens only, so left padding does not shift them."""
        self.model = model
        self.cache_name = cache_kwarg(model)
        self.cache = DynamicCache(config=cast(Any, model).config)
        padded = not bool(mask.all())
        out = model(
            input_ids=prompts,
            attention_mask=mask if padded else None,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_name: self.cache},
        )
        self.cache.batch_repeat_interleave(group)
        self.logits = out.logits[:, -1].repeat_interleave(group, dim=0)
        full = mask.repeat_interleave(group, dim=0)  # (N, P)
        self.prompt_len = prompts.shape[1]
        # Attention mask over prompt + every possible new token; sliced as the cache grows.
        self.attention = (
            torch.cat([full, full.new_ones((full.shape[0], max_new_tokens))], dim=1)
            if padded
            else None
        )
        self.next_position = full.sum(-1, keepdim=True)  # (N, 1)

    def select(self, keep: Tensor) -> None:
        """Keep only the sequences at positions ``keep`` ``(m,)`` of the batch, in that order."""
        self.cache.batch_select_indices(keep)
        self.logits = self.logits[keep]
        self.next_position = self.next_position[keep]
        if self.attention is not None:
            self.attention = self.attention[keep]

    def step(self, tokens: Tensor, t: int) -> None:
        """Feed response token ``t`` ``(n,)`` of every sequence and update :attr:`logits`."""
        attention = None if self.attention is None else self.attention[:, : self.prompt_len + t + 1]
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=attention,
            position_ids=self.next_position + t,
            use_cache=True,
            **{self.cache_name: self.cache},
        )
        self.logits = out.logits[:, -1]
