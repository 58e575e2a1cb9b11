"""KV-cache decoding for the transformers rollout engine: prefill once, then one token a step.

Two implementations of one interface (:class:`Decode`):

- :class:`TransformersDecode` calls the model's own forward for every token; it serves any
  causal LM transformers can cache.
- :class:`LlamaDecode` runs the same computation for the Llama family (``llama``, ``qwen2``,
  ``qwen3``) from the model's own submodules (norms, projections, MLP, rotary embedding)
  with a preallocated KV cache. It skips what transformers' forward redoes at every call
  (mask construction, cache concatenation, rotary tables, output wrappers), which is most
  of a small model's decode time on a CPU; the values are the model's (tests compare
  them with its forward to float64 round-off). Which models qualify, the rotation and the
  attention are shared with the unpadded training forward (:mod:`jackpot.llama`).

Both prefill each distinct prompt once and share its cache across the prompt's group: the
``G`` responses to one prompt start from the same prompt state and first-token logits, and
both let the caller drop rows whose response has ended (:meth:`Decode.select`), so later
steps compute only the rows still generating.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, cast

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from jackpot.llama import attend, own_forward_refusal, rotate_half

__all__ = [
    "Decode",
    "LlamaDecode",
    "TransformersDecode",
    "cache_kwarg",
    "start_decode",
]


class Decode(ABC):
    """A batch of sequences being decoded (``N = U x G`` at the start); ``logits`` predict
    each one's next token."""

    logits: Tensor
    """``(n, V)`` next-token logits of the ``n`` sequences still in the batch."""

    @abstractmethod
    def step(self, tokens: Tensor, t: int) -> None:
        """Feed response token ``t`` ``(n,)`` of every sequence and update :attr:`logits`."""

    @abstractmethod
    def select(self, keep: Tensor) -> None:
        """Keep only the sequences at positions ``keep`` ``(m,)`` of the batch, in that order."""


def cache_kwarg(model: nn.Module) -> str:
    """The name ``model``'s forward takes its KV cache under: ``cache`` from transformers 5.24,
    ``past_key_values`` before (a forward ignores a name it does not know, silently)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _prefill(
    model: nn.Module, prompts: Tensor, mask: Tensor, cache_name: str
) -> tuple[Tensor, DynamicCache]:
    """The model's forward over the distinct left-padded prompts ``(U, P)``, the cache passed
    as ``cache_name`` (:func:`cache_kwarg`).

    Positions count real tokens only, so left padding does not shift them. Returns the
    last position's logits ``(U, V)`` and the filled cache.
    """
    cache = DynamicCache(config=cast(Any, model).config)
    out = model(
        input_ids=prompts,
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        use_cache=True,
        logits_to_keep=1,
        **{cache_name: cache},
    )
    return out.logits[:, -1], cache


class TransformersDecode(Decode):
    """Decoding through the model's own forward and transformers' ``DynamicCache``."""

    def __init__(
        self, model: nn.Module, prompts: Tensor, mask: Tensor, group: int, max_new_tokens: int
    ) -> None:
        """Prefill the distinct prompts ``(U, P)`` and repeat the state ``group`` times."""
        self.cache_name = cache_kwarg(model)
        logits, cache = _prefill(model, prompts, mask, self.cache_name)
        cache.batch_repeat_interleave(group)
        full = mask.repeat_interleave(group, dim=0)  # (N, P)
        self.model = model
        self.cache = cache
        self.logits = logits.repeat_interleave(group, dim=0)
        self.prompt_len = prompts.shape[1]
        # Attention mask over prompt + every possible new token; sliced as the cache grows.
        self.attention = torch.cat([full, full.new_ones((full.shape[0], max_new_tokens))], dim=1)
        self.next_position = full.sum(-1, keepdim=True)  # (N, 1)

    def select(self, keep: Tensor) -> None:
        """Drop the other rows from the cache and the per-row state."""
        self.cache.batch_select_indices(keep)
        self.logits = self.logits[keep]
        self.attention = self.attention[keep]
        self.next_position = self.next_position[keep]

    def step(self, tokens: Tensor, t: int) -> None:
        """One forward of the model on token ``t`` with the cache."""
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=self.attention[:, : self.prompt_len + t + 1],
            position_ids=self.next_position + t,
            use_cache=True,
            **{self.cache_name: self.cache},
        )
        self.logits = out.logits[:, -1]


class LlamaDecode(Decode):
    """The Llama family's forward from the model's submodules, with a preallocated cache.

    Per layer: input norm, q/k/v projections (q/k norms where the model has them), rotary
    embedding from tables built once, a write into the cache buffers, attention over the
    filled prefix, output projection and residual, post-attention norm, MLP and residual.
    The prefill runs the distinct prompts through the same layers, causally masked.
    """

    def __init__(
        self, model: nn.Module, prompts: Tensor, mask: Tensor, group: int, max_new_tokens: int
    ) -> None:
        """Prefill the distinct prompts ``(U, P)`` into ``(U, H_kv, P + T, D)`` buffers, one
        pair per layer, then repeat every row ``group`` times."""
        m: Any = model
        self.model, self.base = m, m.model
        (u, p), length = prompts.shape, prompts.shape[1] + max_new_tokens
        real = mask.bool()
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        weight = self.base.embed_tokens.weight
        config = self.model.config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        for layer in self.base.layers:
            attn = layer.self_attn
            for out in (self.keys, self.values):
                out.append(weight.new_empty((u, heads, length, attn.head_dim)))
        # Prefill: query i sees keys j <= i that are real tokens; a padding query sees itself
        # only (its output is never used, and a row with nothing to attend to would be NaN).
        causal = torch.ones((p, p), dtype=torch.bool, device=real.device).tril()
        eye = torch.eye(p, dtype=torch.bool, device=real.device)
        visible = None if bool(real.all()) else (causal & (real[:, None, :] | eye))[:, None]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (U, P): real tokens only
        hidden = self.base.embed_tokens(prompts)
        hidden = self._layers(hidden, self._rotary(hidden, positions), visible, 0)
        self.logits = self._head(hidden[:, -1:]).repeat_interleave(group, dim=0)
        self.keys = [k.repeat_interleave(group, dim=0) for k in self.keys]
        self.values = [v.repeat_interleave(group, dim=0) for v in self.values]
        full = real.repeat_interleave(group, dim=0)  # (N, P)
        self.mask = (
            None
            if visible is None  # no left padding: every cached position is attended
            else torch.cat([full, full.new_ones((len(full), max_new_tokens))], dim=1)[:, None, None]
        )  # (N, 1, 1, P + T)
        new_positions = full.sum(-1, keepdim=True) + torch.arange(
            max_new_tokens, device=full.device
        )
        self.cos, self.sin = self._rotary(hidden, new_positions)  # (N, 1, T, D): built once
        self.prompt_len = p

    def select(self, keep: Tensor) -> None:
        """Copy the kept rows of the cache buffers, mask and rotary tables."""
        self.keys = [k[keep] for k in self.keys]
        self.values = [v[keep] for v in self.values]
        self.mask = None if self.mask is None else self.mask[keep]
        self.cos, self.sin = self.cos[keep], self.sin[keep]
        self.logits = self.logits[keep]

    def step(self, tokens: Tensor, t: int) -> None:
        """Run token ``t`` through every layer and the head."""
        end = self.prompt_len + t + 1
        mask = None if self.mask is None else self.mask[..., :end]
        hidden = self.base.embed_tokens(tokens[:, None])  # (n, 1, H)
        rotary = self.cos[:, :, t : t + 1], self.sin[:, :, t : t + 1]
        self.logits = self._head(self._layers(hidden, rotary, mask, end - 1))

    def _rotary(self, hidden: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """The model's rotary ``cos, sin`` for ``positions`` ``(n, s)``, as ``(n, 1, s, D)``."""
        cos, sin = self.base.rotary_emb(hidden, positions)
        return cos[:, None], sin[:, None]  # broadcast over heads

    def _layers(
        self, hidden: Tensor, rotary: tuple[Tensor, Tensor], mask: Tensor | None, start: int
    ) -> Tensor:
        """Hidden states ``(n, s, H)`` of tokens at cache slots ``start ... start + s - 1``,
        with rotary tables ``(n, 1, s, D)`` of their positions, through every decoder layer.

        ``mask`` ``(n, 1, s, start + s)``: which cached slots each query sees; None for all
        of them up to its own slot (causal, or everything when ``s == 1``).
        """
        n, s, _ = hidden.shape
        end = start + s
        cos, sin = rotary
        for layer, keys, values in zip(self.base.layers, self.keys, self.values, strict=True):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(n, s, -1, attn.head_dim)
            k = attn.k_proj(x).view(n, s, -1, attn.head_dim)
            if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head before the rotation
                q, k = attn.q_norm(q), attn.k_norm(k)
            keys[:, :, start:end] = rotate_half(k.transpose(1, 2), cos, sin)
            values[:, :, start:end] = attn.v_proj(x).view(n, s, -1, attn.head_dim).transpose(1, 2)
            out = attend(
                rotate_half(q.transpose(1, 2), cos, sin),
                keys[:, :, :end],
                values[:, :, :end],
                mask,
                attn.scaling,
            )
            hidden = hidden + attn.o_proj(out.reshape(n, s, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return hidden

    def _head(self, hidden: Tensor) -> Tensor:
        """Next-token logits ``(n, V)`` from the last hidden state ``(n, 1, H)``."""
        return cast(Tensor, self.model.lm_head(self.base.norm(hidden))[:, -1])


def start_decode(
    model: nn.Module,
    prompts: Tensor,
    mask: Tensor,
    group: int,
    max_new_tokens: int,
    lean: bool = True,
) -> Decode:
    """Prefill the distinct prompts ``(U, P)`` for ``group`` responses each.

    ``lean``: use :class:`LlamaDecode` when :func:`own_forward_refusal` allows it, else
    :class:`TransformersDecode`.
    """
    if lean and own_forward_refusal(model) is None:
        return LlamaDecode(model, prompts, mask, group, max_new_tokens)
    return TransformersDecode(model, prompts, mask, group, max_new_tokens)
