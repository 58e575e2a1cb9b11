"""The unpadded Llama-family forward scores and trains exactly as the model's own forward."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from jackpot.fit import enable_activation_checkpointing
from jackpot.llama import unpadded_logits, unpadded_refusal
from jackpot.rollout.batch import left_pad
from jackpot.step import forward_logits

from .test_decode import PROMPTS, SIZES, _model

RESPONSE_LENGTHS = [5, 1, 3]
"""Ragged responses (right-padded to 5): the longest row is not the longest prompt's."""


def _batch() -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """``(ids, mask, P, response_mask)`` of :data:`PROMPTS` with random ragged responses."""
    prompts, prompt_mask = left_pad(PROMPTS, 0)
    gen = torch.Generator().manual_seed(0)
    width = max(RESPONSE_LENGTHS)
    response_mask = (torch.arange(width)[None] < torch.tensor(RESPONSE_LENGTHS)[:, None]).long()
    response = torch.randint(3, SIZES["vocab_size"], (len(PROMPTS), width), generator=gen)
    response = response * response_mask  # padding id 0
    ids = torch.cat([prompts, response], dim=1)
    mask = torch.cat([prompt_mask, response_mask], dim=1)
    return ids, mask, prompts.shape[1], response_mask.bool()


def _loss_and_grads(
    model: torch.nn.Module, logits: torch.Tensor, ids: torch.Tensor, real: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Gradients of a masked log-likelihood of the response tokens."""
    logp = logits.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
    model.zero_grad()
    (logp * real).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointed", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("family", ["qwen2", "llama", "qwen3"])
def test_unpadded_forward_equals_the_models_forward(
    family: str, checkpointed: bool, attention_path: str
) -> None:
    """Logits at real response positions agree to 1e-12 (float64), padded positions are zero,
    and the gradients of a masked loss agree, with activation checkpointing too, through
    either attention path."""
    model = _model(family).train()
    if checkpointed:
        enable_activation_checkpointing(model)
        assert all(layer.gradient_checkpointing for layer in model.model.layers)
    assert unpadded_refusal(model) is None
    ids, mask, prompt_len, real = _batch()
    responses = ids[:, prompt_len:]
    plain = forward_logits(model, ids, mask, prompt_len, 0.7)
    lean = forward_logits(model, ids, mask, prompt_len, 0.7, unpadded=True)
    assert lean.shape == plain.shape
    torch.testing.assert_close(lean[real], plain[real], atol=1e-12, rtol=0)
    assert bool((lean[~real] == 0).all())
    want = _loss_and_grads(model, plain, responses, real)
    got = _loss_and_grads(model, lean, responses, real)
    assert got.keys() == want.keys() and len(want) == len(list(model.parameters()))
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, atol=1e-12, rtol=1e-10, msg=name)


def test_one_token_rows_and_no_padding() -> None:
    """Rows whose real length is one token, and a batch without any padding."""
    model = _model("qwen2")
    ids = torch.tensor([[3, 4, 5], [6, 7, 8]])
    for mask in (torch.tensor([[0, 1, 1], [0, 1, 0]]), torch.ones_like(ids)):
        plain = forward_logits(model, ids, mask, 2, 1.0)
        lean = unpadded_logits(model, ids, mask, 2)
        real = mask[:, 2:].bool()
        torch.testing.assert_close(lean[real], plain[real], atol=1e-12, rtol=0)


def test_attention_dropout_is_refused() -> None:
    """Only the model's forward applies attention dropout while training."""
    model = Qwen2ForCausalLM(Qwen2Config(**SIZES, attention_dropout=0.1))
    assert "attention dropout" in str(unpadded_refusal(model))
