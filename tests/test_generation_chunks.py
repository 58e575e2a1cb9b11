"""Rollouts decoded in chunks of whole groups (``rollout.generation_batch_size``): the joined
batch is a valid batch, and each chunk is what the engine samples for those prompts alone."""

from __future__ import annotations

import torch

from jackpot.models import ModelSpec, build_model
from jackpot.rollout.batch import concat_rollouts
from jackpot.rollout.engine import SamplingParams
from jackpot.rollout.hf import HFRolloutEngine


def test_chunks_join_into_one_valid_batch() -> None:
    model = build_model(ModelSpec(vocab_size=30, hidden_size=16, num_layers=1, num_heads=2))
    engine = HFRolloutEngine(model, pad_token_id=0)
    params = SamplingParams(1.0, 0, 1.0, 6, (1,), logprobs_k=3)
    prompts = [[3, 4], [5, 6, 7, 8, 9], [10], [11, 12, 13]]
    gen = torch.Generator().manual_seed(0)
    first = engine.generate(prompts[:1], 2, params, gen)
    rest = engine.generate(prompts[1:], 2, params, gen)
    joined = concat_rollouts([first.with_texts(["a"] * 2), rest.with_texts(["b"] * 6)])
    joined.validate()
    assert joined.num_sequences == 8
    assert joined.group_ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert joined.prompts == ["a"] * 2 + ["b"] * 6
    p, t = joined.prompt_ids.shape[1], joined.response_ids.shape[1]
    assert p == 5 and t == max(first.response_ids.shape[1], rest.response_ids.shape[1])
    # Each chunk's rows are unchanged, padding aside.
    for part, rows in ((first, slice(0, 2)), (rest, slice(2, 8))):
        tp, pp = part.response_ids.shape[1], part.prompt_ids.shape[1]
        assert torch.equal(joined.response_ids[rows, :tp], part.response_ids)
        assert torch.equal(joined.logp_inf[rows, :tp], part.logp_inf)
        assert torch.equal(joined.prompt_ids[rows, p - pp :], part.prompt_ids)
        assert joined.response_mask[rows, tp:].sum() == 0
    assert joined.num_tokens == first.num_tokens + rest.num_tokens


def test_reward_text_leaves_out_the_stop_token() -> None:
    model = build_model(ModelSpec(vocab_size=30, hidden_size=16, num_layers=1, num_heads=2))
    params = SamplingParams(1.0, 0, 1.0, 20, (1,), logprobs_k=2)
    batch = HFRolloutEngine(model, pad_token_id=0).generate(
        [[3, 4]], 16, params, torch.Generator().manual_seed(0)
    )
    assert batch.finished.any()
    for full, text, done in zip(
        batch.response_lists(), batch.response_lists(without_stop=True), batch.finished, strict=True
    ):
        assert full == ([*text, 1] if done else text)


def test_a_rollout_recording_only_the_sampled_token_saves_to_a_file(tmp_path) -> None:
    from jackpot.rollout.io import load_rollouts, save_rollouts

    model = build_model(ModelSpec(vocab_size=30, hidden_size=16, num_layers=1, num_heads=2))
    params = SamplingParams(1.0, 0, 1.0, 5, (1,), logprobs_k=1)
    batch = HFRolloutEngine(model, pad_token_id=0).generate(
        [[3, 4]], 4, params, torch.Generator().manual_seed(0)
    )
    loaded = load_rollouts(save_rollouts(batch, tmp_path / "k1.safetensors"))
    assert torch.equal(loaded.topk_ids[..., 0], batch.response_ids)
