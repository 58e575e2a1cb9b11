"""The lean Llama-family decode step computes what the model's own forward computes."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from jackpot.llama import own_forward_refusal
from jackpot.rollout import SamplingParams
from jackpot.rollout.batch import left_pad
from jackpot.rollout.decode import (
    LlamaDecode,
    TransformersDecode,
    cache_kwarg,
    start_decode,
)
from jackpot.rollout.hf import HFRolloutEngine

PROMPTS = [[1, 5, 6, 7], [1, 8], [1, 9, 9, 4, 3, 3, 10]]
"""Ragged: the shorter prompts are left-padded, so the attention mask matters."""
EQUAL = [[1, 5, 6, 7], [1, 8, 2, 3], [4, 4, 4, 4]]
"""No padding: the prefill is plainly causal and decode steps attend to every slot."""
SIZES: dict[str, Any] = {
    "vocab_size": 20,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention
    "max_position_embeddings": 64,
}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def _model(family: str) -> torch.nn.Module:
    """A random float64 model of ``family``: biased QKV, GQA with llama3 rope, q/k norms."""
    torch.manual_seed(0)
    if family == "qwen2":
        model: torch.nn.Module = Qwen2ForCausalLM(Qwen2Config(**SIZES))
    elif family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**SIZES, rope_parameters=LLAMA3_ROPE))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(**SIZES, head_dim=16))
    return model.double().eval()


@pytest.mark.parametrize("prompts", [PROMPTS, EQUAL], ids=["ragged", "equal"])
@pytest.mark.parametrize("family", ["qwen2", "llama", "qwen3"])
def test_lean_step_equals_the_models_forward(
    family: str, prompts: list[list[int]], attention_path: str
) -> None:
    """Next-token logits after prefill and after each of 6 fed tokens agree to 1e-12, also
    after rows are dropped mid-way, and equal a fresh forward over each whole (unpadded)
    sequence, through either attention path."""
    model = _model(family)
    assert own_forward_refusal(model) is None
    ids, mask = left_pad(prompts, 0)
    group, steps = 3, 6
    rows = torch.arange(len(prompts) * group)
    gen = torch.Generator().manual_seed(0)
    fed = torch.zeros((len(rows), 0), dtype=torch.int64)
    with torch.no_grad():
        lean = LlamaDecode(model, ids, mask, group, steps)
        plain = TransformersDecode(model, ids, mask, group, steps)
        for t in range(steps):
            torch.testing.assert_close(lean.logits, plain.logits, atol=1e-12, rtol=0)
            if t == 3:  # rows 1, 3, 4, 6 and 8 "stopped"
                keep = torch.tensor([0, 2, 5, 7])
                lean.select(keep)
                plain.select(keep)
                rows, fed = rows[keep], fed[keep]
            token = torch.multinomial(lean.logits.softmax(-1), 1, generator=gen).squeeze(-1)
            fed = torch.cat([fed, token[:, None]], dim=1)
            lean.step(token, t)
            plain.step(token, t)
        torch.testing.assert_close(lean.logits, plain.logits, atol=1e-12, rtol=0)
        for i, row in enumerate(rows.tolist()):
            full = torch.cat([torch.tensor(prompts[row // group]), fed[i]])
            fresh = model(full[None]).logits[0, -1]
            torch.testing.assert_close(lean.logits[i], fresh, atol=1e-10, rtol=0)


def test_models_the_lean_step_cannot_reproduce_use_the_forward() -> None:
    """Other architectures, sliding windows, length-dependent rope and partitioned parameters
    are refused with a reason, and decoding them goes through the model's forward."""
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=20, n_embd=32, n_layer=1, n_head=2)).eval()
    assert "model_type 'gpt2'" in str(own_forward_refusal(gpt2))
    ids, mask = left_pad(PROMPTS, 0)
    with torch.no_grad():
        assert isinstance(start_decode(gpt2, ids, mask, 2, 3), TransformersDecode)
    sliding = Qwen2ForCausalLM(
        Qwen2Config(**SIZES, use_sliding_window=True, sliding_window=4, max_window_layers=0)
    )
    assert "sliding-window" in str(own_forward_refusal(sliding))
    dynamic = LlamaForCausalLM(
        LlamaConfig(**SIZES, rope_parameters={"rope_type": "dynamic", "factor": 2.0})
    )
    assert "rescales with the sequence length" in str(own_forward_refusal(dynamic))
    partitioned = _model("qwen2")
    next(partitioned.parameters()).ds_status = "NOT_AVAILABLE"  # as DeepSpeed ZeRO-3 marks
    assert "ZeRO-3" in str(own_forward_refusal(partitioned))


def test_a_sharded_model_is_refused_and_decodes_through_its_forward(cpu_mesh: Any) -> None:
    """FSDP2 (``fully_shard``, here on a one-process gloo group) leaves DTensor shards that only
    the model's forward gathers: the lean step and the unpadded forward refuse the model, and
    decoding it through the forward gives the unsharded model's logits."""
    from jackpot.llama import unpadded_refusal
    from jackpot.training.sharding import shard_models

    model = _model("qwen2").eval()
    ids, mask = left_pad(PROMPTS, 0)
    with torch.no_grad():
        expected = start_decode(model, ids, mask, 2, 3).logits
    shard_models([model], cpu_mesh, "32-true")
    assert "sharded (FSDP2)" in str(own_forward_refusal(model))
    assert "sharded (FSDP2)" in str(unpadded_refusal(model))
    with torch.no_grad():
        decode = start_decode(model, ids, mask, 2, 3)
    assert isinstance(decode, TransformersDecode)
    torch.testing.assert_close(decode.logits, expected, atol=1e-10, rtol=0)


def test_engine_on_a_refused_model_still_records_its_distribution() -> None:
    """GPT-2 rolls out through the forward path; its records match a fresh forward."""
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
    model = _model("qwen2")
    assert cache_kwarg(model) in inspect.signature(model.forward).parameters
