"""The vLLM engine records exactly the distribution it samples from, and follows new weights."""

from __future__ import annotations

import copy

import pytest
import torch
from scipy.stats import chisquare

from jackpot.rollout import RolloutBatch, SamplingParams, sampling_logprobs
from jackpot.rollout.vllm import VLLMRolloutEngine, vllm_sampling_params
from tests_vllm.conftest import EOS, VOCAB

RAGGED_PROMPTS = [[1, 5, 6, 7], [1, 8], [1, 9, 9, 4, 3, 3, 10]]
# Longer than one KV-cache block (128 tokens on CPU), so vLLM's prefix cache holds it.
LONG_PROMPT = [1 + (7 * i) % (VOCAB - 1) for i in range(160)]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _max_gap(model: torch.nn.Module, batch: RolloutBatch) -> float:
    """Largest |recorded - fresh| over logp_inf and the top-k record, fresh = unpadded forward.

    A top-k entry counts as a gap of inf when it is finite on one side and -inf on the other.
    """
    p = batch.params
    gap = 0.0
    for row in range(batch.num_sequences):
        prompt = batch.prompt_ids[row][batch.prompt_mask[row].bool()]
        length = int(batch.response_lengths[row])
        ids = torch.cat([prompt, batch.response_ids[row, :length]])
        with torch.no_grad():
            logits = model(ids[None]).logits[0, len(prompt) - 1 : len(prompt) - 1 + length]
        ref = sampling_logprobs(logits, p.temperature, p.top_k, p.top_p)  # (L, V)
        sampled = ref.gather(-1, batch.response_ids[row, :length, None]).squeeze(-1)
        assert torch.isfinite(sampled).all(), "a sampled token lay outside the kept set"
        gap = max(gap, float((batch.logp_inf[row, :length] - sampled).abs().max()))
        expected = ref.gather(-1, batch.topk_ids[row, :length])  # (L, k)
        recorded = batch.topk_logp[row, :length]
        if not torch.equal(torch.isinf(expected), torch.isinf(recorded)):
            return float("inf")
        finite = torch.isfinite(expected)
        gap = max(gap, float((expected[finite] - recorded[finite]).abs().max()))
    return gap


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.0, 0, 0.8), (1.3, 6, 0.9)],
)
def test_recorded_logprobs_match_a_fresh_forward_pass(
    model: torch.nn.Module,
    engine: VLLMRolloutEngine,
    temperature: float,
    top_k: int,
    top_p: float,
) -> None:
    """logp_inf and the top-k record equal a transformers forward pass (fp32) to 1e-5."""
    params = SamplingParams(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        max_new_tokens=12,
        stop_token_ids=(EOS,),
        logprobs_k=4,
    )
    batch = engine.generate(RAGGED_PROMPTS, 3, params, _generator(0))
    batch.validate()
    assert _max_gap(model, batch) <= 1e-5


def test_greedy_records_a_point_mass_on_the_argmax(
    model: torch.nn.Module, engine: VLLMRolloutEngine
) -> None:
    """temperature 0: vLLM reports raw log-probs, the engine records p_inf (a point mass)."""
    params = SamplingParams(temperature=0.0, max_new_tokens=6, logprobs_k=3)
    batch = engine.generate(RAGGED_PROMPTS, 2, params, _generator(0))
    batch.validate()
    assert _max_gap(model, batch) == 0.0
    assert (batch.topk_logp[..., 1:] == float("-inf")).all()


def test_first_token_frequencies_match_the_recorded_distribution(
    engine: VLLMRolloutEngine,
) -> None:
    """Chi-square goodness of fit of 3000 first tokens; false-alarm rate alpha = 1e-3."""
    alpha = 1e-3  # with the fixed seed the outcome is deterministic; alpha bounds bad luck
    params = SamplingParams(temperature=0.8, top_p=0.6, max_new_tokens=1, logprobs_k=VOCAB)
    batch = engine.generate([[1, 4, 7]], 3000, params, _generator(1234))
    probs = torch.zeros(VOCAB).scatter(0, batch.topk_ids[0, 0], batch.topk_logp[0, 0].exp())
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    counts = torch.bincount(batch.response_ids[:, 0], minlength=VOCAB).double()
    kept = probs > 0
    assert counts[~kept].sum() == 0, "sampled a token that top-p removed"
    assert int((~kept).sum()) > 0, "top-p removed nothing; the test would not check truncation"
    expected = probs[kept].double() * counts.sum()
    expected *= counts[kept].sum() / expected.sum()  # exact totals for scipy
    assert chisquare(counts[kept].numpy(), expected.numpy()).pvalue > alpha


def test_same_generator_same_rollouts(engine: VLLMRolloutEngine) -> None:
    """Per-request seeds come from the generator: same state, same batch; another, another."""
    params = SamplingParams(max_new_tokens=8, logprobs_k=4)
    first = engine.generate(RAGGED_PROMPTS, 4, params, _generator(7))
    again = engine.generate(RAGGED_PROMPTS, 4, params, _generator(7))
    other = engine.generate(RAGGED_PROMPTS, 4, params, _generator(8))
    assert torch.equal(first.response_ids, again.response_ids)
    assert torch.equal(first.topk_logp, again.topk_logp)
    assert not torch.equal(first.response_ids, other.response_ids)


def test_groups_prompts_and_padding(engine: VLLMRolloutEngine) -> None:
    """Rows i*G..i*G+G-1 answer prompt i, left-padded like the transformers engine's."""
    batch = engine.generate(RAGGED_PROMPTS, 3, SamplingParams(max_new_tokens=4), _generator(0))
    assert batch.prompt_ids.shape == (9, 7)
    assert batch.group_ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for row in range(9):
        prompt = RAGGED_PROMPTS[row // 3]
        assert batch.prompt_ids[row, -len(prompt) :].tolist() == prompt
        assert batch.prompt_mask[row].tolist() == [0] * (7 - len(prompt)) + [1] * len(prompt)


def test_stop_tokens_end_responses_and_set_finished(engine: VLLMRolloutEngine) -> None:
    """A stop token ends a response and is kept in it; rows that hit the limit are truncated."""
    stops = (2, 3, 4, 5)
    params = SamplingParams(max_new_tokens=6, stop_token_ids=stops, logprobs_k=4)
    batch = engine.generate(RAGGED_PROMPTS, 8, params, _generator(3))
    batch.validate()
    for row, response in enumerate(batch.response_lists()):
        hit = [t for t, token in enumerate(response) if token in stops]
        if batch.finished[row]:
            assert hit == [len(response) - 1], "a finished row ends at its first stop token"
        else:
            assert hit == [] and len(response) == 6, "a truncated row ran to max_new_tokens"
    assert batch.finished.any() and not batch.finished.all(), "both outcomes must occur"


def test_the_sampled_token_is_always_in_the_topk(engine: VLLMRolloutEngine) -> None:
    """With k=1 the sampled token is often not the argmax: it then takes the only slot."""
    params = SamplingParams(temperature=1.5, max_new_tokens=8, logprobs_k=1)
    batch = engine.generate(RAGGED_PROMPTS, 4, params, _generator(5))
    batch.validate()
    used = batch.response_mask.bool()
    assert torch.equal(batch.topk_ids[..., 0][used], batch.response_ids[used])


def test_weights_follow_a_training_step(model: torch.nn.Module, engine: VLLMRolloutEngine) -> None:
    """After sync_weights the engine samples from the updated model, prefix cache included.

    Before the sync the engine must disagree with the updated model: the check has teeth.
    """
    trained = copy.deepcopy(model)
    optimizer = torch.optim.SGD(trained.parameters(), lr=1.0)
    ids = torch.tensor([LONG_PROMPT[:40]])
    trained(ids, labels=ids).loss.backward()
    optimizer.step()
    params = SamplingParams(max_new_tokens=8, logprobs_k=4)
    stale = engine.generate([LONG_PROMPT], 4, params, _generator(0))  # fills the prefix cache
    assert _max_gap(trained, stale) > 1e-3, "the step did not change the log-probs"
    try:
        engine.sync_weights(trained)
        synced = engine.generate([LONG_PROMPT], 4, params, _generator(0))
        assert _max_gap(trained, synced) <= 1e-5
    finally:
        engine.sync_weights(model)
    restored = engine.generate([LONG_PROMPT], 4, params, _generator(0))
    assert _max_gap(model, restored) <= 1e-5


@pytest.mark.parametrize(("top_k", "expected"), [(0, -1), (5, 5), (VOCAB, -1), (VOCAB + 3, -1)])
def test_top_k_off_is_vllms_minus_one(top_k: int, expected: int) -> None:
    """jackpot's top_k 0 (off) and a top_k covering the vocabulary map to vLLM's -1."""
    params = SamplingParams(top_k=top_k)
    assert vllm_sampling_params(params, 0, VOCAB, VOCAB).top_k == expected


def test_sampling_params_mapping() -> None:
    """Temperature, top-p, length, seed and stop tokens pass through; only stop tokens stop."""
    params = SamplingParams(
        temperature=0.6, top_p=0.9, max_new_tokens=5, stop_token_ids=(2, 3), logprobs_k=4
    )
    mapped = vllm_sampling_params(params, 1234, VOCAB, VOCAB)
    assert (mapped.temperature, mapped.top_p, mapped.max_tokens) == (0.6, 0.9, 5)
    assert mapped.seed == 1234 and mapped.n == 1
    assert mapped.stop_token_ids == [2, 3]
    assert mapped.ignore_eos, "the model's EOS must not end responses unless it is a stop token"
    assert mapped.logprobs == 4


def test_logprobs_k_is_capped_at_the_vocabulary_and_checked_against_max_logprobs() -> None:
    """k above the vocabulary asks for V entries; above the engine's max_logprobs is refused."""
    assert vllm_sampling_params(SamplingParams(logprobs_k=50), 0, VOCAB, VOCAB).logprobs == VOCAB
    with pytest.raises(ValueError, match=r"rollout.logprobs_k=8 exceeds .* max_logprobs=4"):
        vllm_sampling_params(SamplingParams(logprobs_k=8), 0, VOCAB, 4)
