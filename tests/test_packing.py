"""The packed (padding-free) forward scores and trains exactly as the model's padded forward."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from jackpot.fit import enable_activation_checkpointing
from jackpot.packing import pack, pack_rows, packed_logits, packing_refusal, row_capacity
from jackpot.rollout.batch import left_pad
from jackpot.step import forward_logits

from .conftest import PROMPTS, SIZES, family_model

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


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("checkpointed", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("family", ["qwen2", "llama", "qwen3"])
def test_packed_forward_equals_the_padded_forward(
    family: str, checkpointed: bool, attention: str
) -> None:
    """Logits at real response positions agree to 1e-12 (float64), padded positions are zero,
    and the gradients of a masked loss agree, with activation checkpointing too, through the
    model's sdpa and eager attention. The padded reference runs sdpa (transformers' eager kernel
    turns fully masked left-padding rows into NaN in float64), and eager takes its softmax in
    float32, so there the values agree to float32 round-off."""
    model = family_model(family).train()
    if checkpointed:
        enable_activation_checkpointing(model)
        assert all(layer.gradient_checkpointing for layer in model.model.layers)
    assert packing_refusal(model) is None
    ids, mask, prompt_len, real = _batch()
    responses = ids[:, prompt_len:]
    plain = forward_logits(model, ids, mask, prompt_len, 0.7)
    want = _loss_and_grads(model, plain, responses, real)
    model.set_attn_implementation(attention)
    packed = forward_logits(model, ids, mask, prompt_len, 0.7, packed=True)
    assert packed.shape == plain.shape
    atol, rtol = (1e-12, 1e-10) if attention == "sdpa" else (1e-6, 1e-5)
    torch.testing.assert_close(packed[real], plain[real], atol=atol, rtol=0)
    assert bool((packed[~real] == 0).all())
    got = _loss_and_grads(model, packed, responses, real)
    assert got.keys() == want.keys() and len(want) == len(list(model.parameters()))
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, atol=atol, rtol=rtol, msg=name)


def test_one_token_rows_no_padding_and_one_row() -> None:
    """Rows whose real length is one token, a batch without any padding, and the single row a
    varlen kernel gets."""
    model = family_model("qwen2")
    ids = torch.tensor([[3, 4, 5], [6, 7, 8]])
    for mask in (torch.tensor([[0, 1, 1], [0, 1, 0]]), torch.ones_like(ids)):
        plain = forward_logits(model, ids, mask, 2, 1.0)
        real = mask[:, 2:].bool()
        packed = packed_logits(model, ids, mask, 2)
        torch.testing.assert_close(packed[real], plain[real], atol=1e-12, rtol=0)
    ids, mask, prompt_len, real = _batch()
    one = pack(ids, mask, prompt_len, capacity=int(mask.sum()))
    assert one.input_ids.shape == (1, int(mask.sum()))
    with torch.no_grad():
        model.eval()
        out = model(input_ids=one.input_ids, position_ids=one.position_ids, use_cache=False)
        plain = forward_logits(model, ids, mask, prompt_len, 1.0)
    got = out.logits[0, one.predicts]
    torch.testing.assert_close(got, plain.flatten(0, 1)[one.targets], atol=1e-12, rtol=0)


def test_rows_pack_best_fit_within_the_capacity() -> None:
    """Every sequence lands once; no row exceeds the capacity unless one sequence does."""
    lengths = [7, 3, 5, 2, 8, 1, 4, 12]
    rows = pack_rows(lengths, 8)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 8 or len(row) == 1 for row in rows)
    # 12 | 8 | 7+1 | 5+3 | 4+2: the optimum (12 and 8 fill rows alone, 22 tokens need 3 more)
    assert sorted(sorted(lengths[i] for i in row) for row in rows) == [
        [1, 7], [2, 4], [3, 5], [8], [12],
    ]  # fmt: skip
    assert row_capacity(4, 10, 20, varlen=False) == 20  # attention work of 4 padded rows
    assert row_capacity(4, 10, 40, varlen=False) == 10  # never narrower than the batch
    assert row_capacity(4, 10, 20, varlen=True) == 20  # one row of every token


def test_a_model_that_ignores_packing_is_refused_and_keeps_the_padded_forward() -> None:
    """A forward that drops ``position_ids`` lets the packed sequences see each other: the probe
    says so, and a run falls back to the padded forward."""

    class Unpacking(Qwen2ForCausalLM):
        def forward(self, *args: Any, **kwargs: Any) -> Any:
            """The model's forward without the position ids that mark packed sequences."""
            kwargs.pop("position_ids", None)
            return super().forward(*args, **kwargs)

    torch.manual_seed(0)
    model = Unpacking(Qwen2Config(**SIZES)).double()
    assert "attend to each other" in str(packing_refusal(model))
    assert model.training  # the probe leaves the mode as it found it
