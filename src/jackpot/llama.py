"""The Llama family's forward (``llama``, ``qwen2``, ``qwen3``) run from a model's own modules.

transformers' forward serves every architecture and redoes, at every call, work a known
architecture does not need (4-D mask construction, output wrappers) and computes every
position of a padded batch. For the Llama family jackpot runs the same computation from the
model's submodules (norms, projections, rotary embedding, MLP, head), so it can compute only
the tokens that matter:

- :func:`unpadded_logits`: the scoring and training forward over the real tokens of a
  left-padded prompt + right-padded response batch (padding removed, as verl's
  ``use_remove_padding``), the head applied only where a response token is predicted;
- the lean decode step of the rollout engine (:class:`jackpot.rollout.decode.LlamaDecode`).

Both fall back to the model's forward for any model :func:`own_forward_refusal` refuses.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule
from torch.utils.checkpoint import checkpoint

__all__ = [
    "LLAMA_MODEL_TYPES",
    "attend",
    "own_forward_refusal",
    "rotate_half",
    "unpadded_logits",
    "unpadded_refusal",
]

LLAMA_MODEL_TYPES = ("llama", "qwen2", "qwen3")
"""``config.model_type`` values reproduced here (pre-norm, RMSNorm, rotary attention with
optional q/k norms, gated MLP, untied or tied head without logit scaling)."""

STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
"""Rotary variants whose cos/sin depend on the position only, so they can be tabulated
(``dynamic`` and ``longrope`` rescale with the sequence length)."""


def own_forward_refusal(model: nn.Module) -> str | None:
    """Why the Llama-family computation here cannot reproduce ``model``, or None when it can."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in LLAMA_MODEL_TYPES:
        return f"model_type {model_type!r} is not one of {LLAMA_MODEL_TYPES}"
    if any(isinstance(m, FSDPModule) for m in model.modules()):
        return "the model is sharded (FSDP2): only its own forward gathers the DTensor shards"
    if any(hasattr(param, "ds_status") for param in model.parameters()):
        return "the model's parameters are partitioned (DeepSpeed ZeRO-3)"
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    if any(kind != "full_attention" for kind in layer_types):
        return "the model has sliding-window layers"
    base = getattr(model, "model", None)
    parts = ("embed_tokens", "layers", "norm", "rotary_emb")
    if base is None or not all(hasattr(base, p) for p in parts) or not hasattr(model, "lm_head"):
        return "the model lacks the model.{embed_tokens,layers,norm,rotary_emb} / lm_head layout"
    rope_type = getattr(base.rotary_emb, "rope_type", "default")
    if rope_type not in STATIC_ROPE_TYPES:
        return f"rope_type {rope_type!r} rescales with the sequence length"
    layer_parts = ("input_layernorm", "post_attention_layernorm", "mlp", "self_attn")
    attn_parts = ("q_proj", "k_proj", "v_proj", "o_proj", "scaling", "head_dim")
    for layer in base.layers:
        attn = getattr(layer, "self_attn", None)
        if not all(hasattr(layer, p) for p in layer_parts) or not all(
            hasattr(attn, p) for p in attn_parts
        ):
            return "a decoder layer lacks the Llama-family submodules"
    return None


def unpadded_refusal(model: nn.Module) -> str | None:
    """Why :func:`unpadded_logits` cannot reproduce ``model``'s training forward, or None.

    Beyond :func:`own_forward_refusal`: attention dropout, which only the model's forward
    applies while training.
    """
    reason = own_forward_refusal(model)
    if reason is None and float(getattr(model.config, "attention_dropout", 0.0) or 0.0) > 0:
        return "the model has attention dropout"
    return reason


def rotate_half(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding of ``x`` ``(..., D)`` in the rotate-half layout of the Llama family."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


EXPLICIT_ATTENTION_KEYS = 64
"""Up to this many keys, attention of several queries per row (prefill, scoring, training)
on a CPU runs as the explicit product (two batched matmuls and a softmax): torch's CPU flash
kernel costs more per call than such short rows compute (forward + backward measured 2x
slower at 22 keys, about even at 128; from 256 keys the kernel wins). A decode step's single
query keeps the kernel, about 3 % faster there."""


def attend(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """Queries ``(n, H_q, s, D)`` over ``(n, H_kv, L, D)`` keys and values -> ``(n, s, H_q, D)``.

    Grouped-query attention without copying keys and values: the ``H_q / H_kv`` query heads
    that share a key/value head become more query rows of that head (the mask repeated for
    them). ``mask`` ``(n, 1, s, L)``, True where a query sees a key; None: causal when
    ``s == L``, else every key (one new token over a cache). Every query must see a key.
    """
    n, heads, s, dim = q.shape
    kv_heads, length = keys.shape[1], keys.shape[2]
    grouped = q.reshape(n, kv_heads, -1, dim)  # (n, H_kv, H_q / H_kv * s, D)
    explicit = q.device.type == "cpu" and s > 1 and length <= EXPLICIT_ATTENTION_KEYS
    if mask is None and s == length and s > 1 and (heads > kv_heads or explicit):
        # Causal as an explicit mask: the repeated rows break is_causal's square layout.
        mask = torch.ones((s, s), dtype=torch.bool, device=q.device).tril()[None, None]
    if mask is not None and heads > kv_heads:
        mask = mask.repeat(1, 1, heads // kv_heads, 1)
    if explicit:
        scores = torch.matmul(grouped, keys.transpose(-1, -2)) * scale
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(-1, dtype=torch.promote_types(scores.dtype, torch.float32))
        out = torch.matmul(weights.to(values.dtype), values)  # softmax in fp32 at least
    else:
        causal = mask is None and s == length and s > 1
        out = F.scaled_dot_product_attention(
            grouped, keys, values, attn_mask=mask, is_causal=causal, scale=scale
        )
    return out.reshape(n, heads, s, dim).transpose(1, 2)


def unpadded_logits(model: nn.Module, ids: Tensor, mask: Tensor, prompt_len: int) -> Tensor:
    """Logits ``(N, T, V)`` predicting each response token, computed on real tokens only.

    ``ids``, ``mask`` ``(N, P + T)``: left-padded prompts then right-padded responses, so each
    row's real tokens are contiguous and a token's position is its index among them. The
    ``M`` real tokens go through the norms, projections and MLP as one ``(M, H)`` batch;
    attention runs on rows re-aligned to start at slot 0 (``(N, L_max)``, ``L_max`` the
    longest real length), where plain causal attention never lets a real query see padding;
    the head runs only at the positions predicting a real response token. Logits at padded
    response positions are zero. The values are those of the model's forward (tests compare
    logits and gradients to float64 round-off).
    """
    m: Any = model
    base = m.model
    n, length = ids.shape
    response_len = length - prompt_len
    real = mask.bool()
    flat = real.flatten().nonzero().squeeze(1)  # (M,): real tokens in row-major order
    rows = flat // length
    positions = ((mask.cumsum(-1) - 1).flatten())[flat]
    longest = int(mask.sum(-1).max())
    slots = rows * longest + positions  # each real token's place in the re-aligned rows
    hidden = base.embed_tokens(ids.flatten()[flat])  # (M, H)
    cos, sin = base.rotary_emb(hidden[None], positions[None])  # (1, M, D)
    rotary = cos[0, :, None], sin[0, :, None]  # (M, 1, D): broadcast over heads
    for layer in base.layers:
        args = (layer, hidden, rotary, slots, (n, longest))
        # Activation checkpointing exactly where the model's forward would apply it.
        recompute = layer.training and torch.is_grad_enabled()
        if recompute and getattr(layer, "gradient_checkpointing", False):
            hidden = checkpoint(_layer, *args, use_reentrant=False)
        else:
            hidden = _layer(*args)
    # Column c predicts the token at c + 1: response token t sits at column P + t.
    predicts = torch.zeros_like(real)
    predicts[:, prompt_len - 1 : -1] = real[:, prompt_len:]
    keep = predicts.flatten()[flat].nonzero().squeeze(1)  # among the M real tokens
    logits = m.lm_head(base.norm(hidden.index_select(0, keep)))  # (R, V)
    where = rows[keep] * response_len + flat[keep] % length - (prompt_len - 1)
    out = logits.new_zeros((n * response_len, logits.shape[-1])).index_copy(0, where, logits)
    return out.view(n, response_len, -1)


def _layer(
    layer: Any,
    hidden: Tensor,
    rotary: tuple[Tensor, Tensor],
    slots: Tensor,
    shape: tuple[int, int],
) -> Tensor:
    """One decoder layer on the real tokens ``(M, H)``; attention on the re-aligned rows."""
    attn: Any = layer.self_attn
    tokens, dim = hidden.shape[0], attn.head_dim
    x = layer.input_layernorm(hidden)
    q = attn.q_proj(x).view(tokens, -1, dim)
    k = attn.k_proj(x).view(tokens, -1, dim)
    if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head before the rotation
        q, k = attn.q_norm(q), attn.k_norm(k)
    cos, sin = rotary

    def rows(t: Tensor) -> Tensor:  # (M, h, D) -> (N, h, L_max, D), zeros at padding
        padded = t.new_zeros((shape[0] * shape[1], *t.shape[1:])).index_copy(0, slots, t)
        return padded.view(*shape, *t.shape[1:]).transpose(1, 2)

    out = attend(
        rows(rotate_half(q, cos, sin)),
        rows(rotate_half(k, cos, sin)),
        rows(attn.v_proj(x).view(tokens, -1, dim)),
        None,
        attn.scaling,
    )  # (N, L_max, H_q, D)
    hidden = hidden + attn.o_proj(out.reshape(shape[0] * shape[1], -1).index_select(0, slots))
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))
