"""Cached decoding with shared prefills and dropped rows computes what a fresh forward computes."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from jackpot.rollout import SamplingParams
from jackpot.rollout.batch import left_pad
from jackpot.rollout.decode import Decode, cache_kwarg
from jackpot.rollout.hf import HFRolloutEngine

from .conftest import PROMPTS, family_model

EQUAL = [[1, 5, 6, 7], [1, 8, 2, 3], [4, 4, 4, 4]]
"""No padding: the prefill is plainly causal and decode steps attend to every slot."""


@pytest.mark.parametrize("prompts", [PROMPTS, EQUAL], ids=["ragged", "equal"])
@pytest.mark.parametrize("family", ["qwen2", "llama", "qwen3", "gpt2"])
def test_decode_equals_a_fresh_forward(family: str, prompts: list[list[int]]) -> None:
    """Next-token logits after the shared prefill and after each of 6 fed tokens, also after
    rows are dropped mid-way, equal a fresh forward over each whole (unpadded) sequence."""
    if family == "gpt2":
        torch.manual_seed(0)
        config = GPT2Config(vocab_size=20, n_embd=32, n_layer=2, n_head=2)
        model: torch.nn.Module = GPT2LMHeadModel(config).double().eval()
    else:
        model = family_model(family)
    ids, mask = left_pad(prompts, 0)
    group, steps = 3, 6
    rows = torch.arange(len(prompts) * group)
    gen = torch.Generator().manual_seed(0)
    fed = torch.zeros((len(rows), 0), dtype=torch.int64)

    def check(decode: Decode) -> None:
        for i, row in enumerate(rows.tolist()):
            full = torch.cat([torch.tensor(prompts[row // group]), fed[i]])
            fresh = model(full[None]).logits[0, -1]
            torch.testing.assert_close(decode.logits[i], fresh, atol=1e-10, rtol=0)

    with torch.no_grad():
        decode = Decode(model, ids, mask, group, steps)
        for t in range(steps):
            check(decode)
            if t == 3:  # rows 1, 3, 4, 6 and 8 "stopped"
                keep = torch.tensor([0, 2, 5, 7])
                decode.select(keep)
                rows, fed = rows[keep], fed[keep]
            token = torch.multinomial(decode.logits.softmax(-1), 1, generator=gen).squeeze(-1)
            fed = torch.cat([fed, token[:, None]], dim=1)
            decode.step(token, t)
        check(decode)


def test_a_sharded_model_decodes_as_the_unsharded_one(cpu_mesh: Any) -> None:
    """FSDP2 (``fully_shard``, here on a one-process gloo group) leaves DTensor shards that the
    model's forward gathers: decoding and the packed forward give the unsharded values."""
    from jackpot.packing import packing_refusal
    from jackpot.training.sharding import shard_models

    model = family_model("qwen2").eval()
    ids, mask = left_pad(PROMPTS, 0)
    with torch.no_grad():
        expected = Decode(model, ids, mask, 2, 3).logits
    shard_models([model], cpu_mesh, "32-true")
    assert packing_refusal(model) is None
    with torch.no_grad():
        decode = Decode(model, ids, mask, 2, 3)
    torch.testing.assert_close(decode.logits, expected, atol=1e-10, rtol=0)


def test_engine_on_another_architecture_records_its_distribution() -> None:
    """GPT-2 rolls out through the same loop; its records match a fresh forward."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=20, n_embd=32, n_layer=2, n_head=2)).eval()
    params = SamplingParams(max_new_tokens=5, logprobs_k=1)
    batch = HFRolloutEngine(model, pad_token_id=0).generate(
        PROMPTS, 2, params, torch.Generator().manual_seed(0)
    )
    for row in range(batch.num_sequences):
        prompt = torch.tensor(PROMPTS[row // 2])
        full = torch.cat([prompt, batch.response_ids[row]])
        with torch.no_grad():
            logp = model(full[None]).logits[0].log_softmax(-1)
        steps = logp[len(prompt) - 1 : -1]
        expected = steps.gather(-1, batch.response_ids[row, :, None]).squeeze(-1)
        torch.testing.assert_close(batch.logp_inf[row], expected, atol=1e-5, rtol=0)


def test_the_cache_goes_under_the_name_the_forward_takes() -> None:
    """transformers 5.24 renamed ``past_key_values`` to ``cache``; an unknown name would be
    swallowed by ``**kwargs`` and the decode would run without its cache."""

    class Older(torch.nn.Module):
        def forward(self, input_ids: Any = None, past_key_values: Any = None, **_: Any) -> None:
            """A forward from before the rename."""

    assert cache_kwarg(Older()) == "past_key_values"
    model = family_model("qwen2")
    assert cache_kwarg(model) in inspect.signature(model.forward).parameters
