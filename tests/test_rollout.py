"""The transformers rollout engine records exactly the distribution it samples from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from scipy.stats import chisquare
from transformers import DynamicCache
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from jackpot.models import ModelSpec, build_model
from jackpot.rollout import RolloutBatch, SamplingParams, load_rollouts, sampling_logprobs
from jackpot.rollout.__main__ import main
from jackpot.rollout.decode import cache_kwarg
from jackpot.rollout.hf import HFRolloutEngine
from jackpot.rollout.sampling import sample_tokens, topk_with_sampled

VOCAB = 12
PAD, EOS = 0, 2
RAGGED_PROMPTS = [[1, 5, 6, 7], [1, 8], [1, 9, 9, 4, 3, 3, 10]]


@pytest.fixture(scope="module")
def rollout_model() -> torch.nn.Module:
    """A tiny random Qwen2 over a 12-token vocabulary."""
    return build_model(ModelSpec(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4))


@pytest.fixture(scope="module")
def rollout_engine(rollout_model: torch.nn.Module) -> HFRolloutEngine:
    """The engine under test, padding with id 0."""
    return HFRolloutEngine(cast(Any, rollout_model), pad_token_id=PAD)


def _generate(engine: HFRolloutEngine, params: SamplingParams, group_size: int = 3, seed: int = 0):
    """Roll out the ragged prompts."""
    return engine.generate(RAGGED_PROMPTS, group_size, params, torch.Generator().manual_seed(seed))


def _reference_logp(model: torch.nn.Module, batch: RolloutBatch, row: int) -> torch.Tensor:
    """Fresh unpadded forward over prompt+response of one row -> ``(L, V)`` sampling log-probs."""
    prompt = batch.prompt_ids[row][batch.prompt_mask[row].bool()]
    length = int(batch.response_lengths[row])
    ids = torch.cat([prompt, batch.response_ids[row, :length]])
    with torch.no_grad():
        logits = model(ids[None]).logits[0]  # (P + L, V)
    p = batch.params
    steps = logits[len(prompt) - 1 : len(prompt) - 1 + length]
    return sampling_logprobs(steps, p.temperature, p.top_k, p.top_p)


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.0, 0, 0.8), (1.3, 6, 0.9)],
)
def test_recorded_logprobs_match_a_fresh_forward_pass(
    rollout_model: torch.nn.Module,
    rollout_engine: HFRolloutEngine,
    temperature: float,
    top_k: int,
    top_p: float,
) -> None:
    """logp_inf and the top-k record equal a fresh, unpadded forward pass to 1e-5."""
    params = SamplingParams(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        max_new_tokens=12,
        stop_token_ids=(EOS,),
        logprobs_k=4,
    )
    batch = _generate(rollout_engine, params)
    batch.validate()
    for row in range(batch.num_sequences):
        ref = _reference_logp(rollout_model, batch, row)  # (L, V)
        length = ref.shape[0]
        tokens = batch.response_ids[row, :length]
        expected = ref.gather(-1, tokens[:, None]).squeeze(-1)
        torch.testing.assert_close(batch.logp_inf[row, :length], expected, atol=1e-5, rtol=0)
        recorded = ref.gather(-1, batch.topk_ids[row, :length])  # (L, k)
        torch.testing.assert_close(batch.topk_logp[row, :length], recorded, atol=1e-5, rtol=0)
        assert torch.isfinite(expected).all(), "a sampled token lay outside the kept set"


def test_first_token_frequencies_match_the_recorded_distribution(
    rollout_engine: HFRolloutEngine,
) -> None:
    """Chi-square goodness of fit of 6000 first tokens; false-alarm rate alpha = 1e-3."""
    alpha = 1e-3  # with the fixed seed the outcome is deterministic; alpha bounds bad luck
    params = SamplingParams(temperature=0.8, top_p=0.6, max_new_tokens=1, logprobs_k=VOCAB)
    batch = rollout_engine.generate([[1, 4, 7]], 6000, params, torch.Generator().manual_seed(1234))
    probs = torch.zeros(VOCAB).scatter(0, batch.topk_ids[0, 0], batch.topk_logp[0, 0].exp())
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    counts = torch.bincount(batch.response_ids[:, 0], minlength=VOCAB).double()
    kept = probs > 0
    assert counts[~kept].sum() == 0, "sampled a token that top-p removed"
    assert int((~kept).sum()) > 0, "top-p removed nothing; the test would not check truncation"
    expected = probs[kept].double() * counts.sum()
    expected *= counts[kept].sum() / expected.sum()  # exact totals for scipy
    assert chisquare(counts[kept].numpy(), expected.numpy()).pvalue > alpha


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(1.0, 0, 0.7), (0.5, 3, 1.0), (2.0, 4, 0.6), (1.0, 0, 1.0)]
)
def test_sampling_logprobs_matches_transformers_warpers(
    temperature: float, top_k: int, top_p: float
) -> None:
    """Same kept set and renormalised values as transformers' temperature/top-k/top-p chain."""
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0)) * 3
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    expected = torch.log_softmax(scores, dim=-1)
    got = sampling_logprobs(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    torch.testing.assert_close(got[~got.isinf()], expected[~expected.isinf()])


def test_greedy_is_a_point_mass_on_the_argmax() -> None:
    """temperature 0: log-prob 0 on the first argmax, -inf elsewhere."""
    logits = torch.tensor([[0.0, 3.0, 3.0, 1.0]])
    assert sampling_logprobs(logits, 0.0, 0, 1.0).tolist() == [
        [-torch.inf, 0.0, -torch.inf, -torch.inf]
    ]


def test_ragged_left_padded_prompts_and_groups(rollout_engine: HFRolloutEngine) -> None:
    """Prompts are left-padded copies of the input; rows i*G..i*G+G-1 form group i."""
    batch = _generate(rollout_engine, SamplingParams(max_new_tokens=4), group_size=3)
    assert batch.prompt_ids.shape == (9, 7)
    assert batch.group_ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for row in range(9):
        prompt = RAGGED_PROMPTS[row // 3]
        assert batch.prompt_ids[row, -len(prompt) :].tolist() == prompt
        assert batch.prompt_mask[row].tolist() == [0] * (7 - len(prompt)) + [1] * len(prompt)
        assert (batch.prompt_ids[row, : 7 - len(prompt)] == PAD).all()


def test_stop_tokens_end_responses_and_set_finished(rollout_engine: HFRolloutEngine) -> None:
    """Mask is 1 up to and including the first stop token; finished iff a stop token ended it."""
    stops = (2, 3, 4, 5)  # a third of the vocabulary: most rows stop, at different steps
    params = SamplingParams(max_new_tokens=6, stop_token_ids=stops)
    batch = _generate(rollout_engine, params, group_size=8)
    batch.validate()
    lengths = batch.response_lengths
    assert 0 < int(batch.finished.sum()) < batch.num_sequences
    for row in range(batch.num_sequences):
        n = int(lengths[row])
        tokens = batch.response_ids[row, :n].tolist()
        is_stop = [t in stops for t in tokens]
        assert not any(is_stop[:-1]), "a response continued past a stop token"
        assert bool(batch.finished[row]) == is_stop[-1]
        if not batch.finished[row]:
            assert n == params.max_new_tokens
        assert (batch.response_ids[row, n:] == PAD).all()
        assert (batch.logp_inf[row, n:] == 0).all()


def test_decoding_stops_when_every_row_has_finished(rollout_engine: HFRolloutEngine) -> None:
    """With every token a stop token, T is 1 and all rows are finished."""
    params = SamplingParams(max_new_tokens=8, stop_token_ids=tuple(range(VOCAB)))
    batch = _generate(rollout_engine, params)
    assert batch.response_ids.shape == (9, 1)
    assert batch.finished.all()


def _reference_decode(
    model: torch.nn.Module, prompts: torch.Tensor, mask: torch.Tensor, params: SamplingParams
) -> dict[str, torch.Tensor]:
    """The straightforward loop the engine must match: record and check 'all stopped' per token."""
    n, steps, k = prompts.shape[0], params.max_new_tokens, min(params.logprobs_k, VOCAB)
    gen = torch.Generator().manual_seed(0)
    ids = torch.full((n, steps), PAD)
    logp_inf = torch.zeros((n, steps))
    topk_ids = torch.full((n, steps, k), PAD)
    topk_logp = torch.full((n, steps, k), float("-inf"))
    topk_logp[..., 0] = 0.0
    done = torch.zeros(n, dtype=torch.bool)
    stops = torch.tensor(params.stop_token_ids, dtype=torch.int64)
    cache = DynamicCache(config=cast(Any, model).config)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    name = cache_kwarg(model)
    out = model(input_ids=prompts, attention_mask=mask, position_ids=positions, **{name: cache})
    for t in range(steps):
        logp = sampling_logprobs(out.logits[:, -1], params.temperature, params.top_k, params.top_p)
        token = sample_tokens(logp, gen)
        ids_t, logp_t = topk_with_sampled(logp, token, k)
        live = ~done
        ids[:, t] = torch.where(live, token, PAD)
        logp_inf[:, t] = torch.where(live, logp.gather(-1, token[:, None]).squeeze(-1), 0.0)
        topk_ids[:, t] = torch.where(live[:, None], ids_t, topk_ids[:, t])
        topk_logp[:, t] = torch.where(live[:, None], logp_t, topk_logp[:, t])
        done = done | (live & torch.isin(token, stops))
        if t + 1 == steps or bool(done.all()):
            break
        attention = torch.cat([mask, torch.ones((n, t + 1), dtype=mask.dtype)], dim=1)
        out = model(
            input_ids=ids[:, t : t + 1],
            attention_mask=attention,
            position_ids=mask.sum(-1, keepdim=True) + t,
            **{name: cache},
        )
    used = t + 1
    return {
        "response_ids": ids[:, :used],
        "logp_inf": logp_inf[:, :used],
        "topk_ids": topk_ids[:, :used],
        "topk_logp": topk_logp[:, :used],
        "finished": done,
    }


@pytest.mark.parametrize("check_every", [1, 3, 8])
@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "logprobs_k", "stops", "max_new_tokens"),
    [
        (1.0, 0, 1.0, 4, (2, 3, 4, 5), 20),  # every row stops early: the length is cut
        (0.7, 5, 0.9, 1, (2, 3, 4, 5), 20),  # k = 1: the record is the sampled token
        (1.3, 0, 1.0, 3, (EOS,), 9),  # some rows run to the limit
        (1.0, 0, 0.8, 12, (), 5),  # no stop token, k = V
    ],
)
def test_decode_loop_equals_the_per_token_reference(
    rollout_model: torch.nn.Module,
    check_every: int,
    temperature: float,
    top_k: int,
    top_p: float,
    logprobs_k: int,
    stops: tuple[int, ...],
    max_new_tokens: int,
) -> None:
    """Same tokens, top-k ids, length and finished flags for the same generator; log-probs to
    float32 round-off (the engine prefills each prompt once for its group, the reference
    every row)."""
    params = SamplingParams(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        stop_token_ids=stops,
        logprobs_k=logprobs_k,
    )
    engine = HFRolloutEngine(cast(Any, rollout_model), PAD, done_check_every=check_every)
    batch = engine.generate(RAGGED_PROMPTS, 4, params, torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = _reference_decode(rollout_model.eval(), batch.prompt_ids, batch.prompt_mask, params)
    if stops == (2, 3, 4, 5):
        assert batch.response_ids.shape[1] < max_new_tokens  # the cut is exercised
    for name, expected in ref.items():
        if expected.is_floating_point():
            torch.testing.assert_close(getattr(batch, name), expected, atol=1e-6, rtol=0)
        else:
            assert torch.equal(getattr(batch, name), expected), name


def test_same_seed_same_rollouts(rollout_engine: HFRolloutEngine) -> None:
    """Randomness comes only from the generator."""
    params = SamplingParams(max_new_tokens=6, top_p=0.9, stop_token_ids=(EOS,))
    first, again = _generate(rollout_engine, params), _generate(rollout_engine, params)
    other = _generate(rollout_engine, params, seed=1)
    assert torch.equal(first.response_ids, again.response_ids)
    assert torch.equal(first.logp_inf, again.logp_inf)
    assert not torch.equal(first.response_ids, other.response_ids)


def test_topk_always_holds_the_sampled_token(rollout_engine: HFRolloutEngine) -> None:
    """With k = 1 and a flat distribution the sampled token often replaces the top-1 slot."""
    params = SamplingParams(temperature=3.0, max_new_tokens=8, logprobs_k=1)
    batch = _generate(rollout_engine, params, group_size=4)
    mask = batch.response_mask.bool()
    assert torch.equal(batch.topk_ids[..., 0][mask], batch.response_ids[mask])
    torch.testing.assert_close(batch.topk_logp[..., 0][mask], batch.logp_inf[mask])


def test_engine_restores_training_mode(
    rollout_model: torch.nn.Module, rollout_engine: HFRolloutEngine
) -> None:
    """Generation runs in eval mode and leaves the caller's mode as it was."""
    rollout_model.train()
    _generate(rollout_engine, SamplingParams(max_new_tokens=2))
    assert rollout_model.training
    rollout_model.eval()


def test_sampling_module_imports_no_transformers() -> None:
    """The trainer-facing pure parts of ``jackpot.rollout`` load without transformers."""
    code = (
        "import sys, jackpot.rollout, jackpot.rollout.sampling\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_generate_then_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``generate`` writes a valid, scored file; ``inspect`` summarises it."""
    out = tmp_path / "r.safetensors"
    argv = ["generate", "--n-prompts", "3", "--group-size", "2", "--hidden-size", "32"]
    assert main([*argv, "--out", str(out), "--top-k", "5"]) == 0
    batch = load_rollouts(out)
    assert batch.num_sequences == 6 and batch.rewards is not None
    assert batch.params.top_k == 5 and batch.answers is not None
    assert main(["inspect", str(out), "--show", "2"]) == 0
    printed = capsys.readouterr().out
    assert "N=6" in printed and "reward" in printed and "[1]" in printed


def test_cli_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Missing files, malformed files and bad flags give exit code 2 and a short message."""
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not a rollout file")
    assert main(["inspect", str(junk)]) == 2
    assert main(["generate", "--out", str(tmp_path / "x"), "--n-prompts", "0"]) == 2
    assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--task", "nope", "--out", "x"])
    assert exit_info.value.code == 2
