"""bf16: the OBRS math stays fp32 whatever the model dtype, and a bf16 step decides what an
fp32 step decides, within a stated tolerance; bf16-mixed and bf16-true runs train on CPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from jackpot.fit import main
from jackpot.models import ModelSpec, build_model
from jackpot.rollout.engine import SamplingParams
from jackpot.rollout.hf import HFRolloutEngine
from jackpot.samplers import get_sampler
from jackpot.step import forward_logits, run_sampler, step_tensors, target_scores
from jackpot.training.csv_logger import read_metrics

from .conftest import DEFAULT_CONFIG, tiny_overrides

V = 48


def _decide(policy: torch.nn.Module, batch, dtype: torch.dtype):
    """OBRS (top-k Z, budget) on ``batch`` with p_ref scored by ``policy`` cast to ``dtype``."""
    model = policy.to(dtype)
    ids, mask = batch.full_sequences()
    with torch.no_grad():
        logits = forward_logits(model, ids, mask, batch.prompt_ids.shape[1], 1.0)
    assert logits.dtype == dtype
    sampler = get_sampler("obrs", budget=0.9, topk=4)
    ref = target_scores(
        logits,
        batch.response_ids,
        topk_inf=(batch.topk_ids, batch.topk_logp),
        topk_k=4,
        keep_logits=False,
    )
    t = step_tensors(
        batch.response_ids,
        batch.response_mask,
        torch.arange(batch.num_sequences, dtype=torch.float32) % 2,
        batch.group_ids,
        batch.logp_inf,
        ref.logp,
        None,
        "grpo",
    )
    index = torch.arange(batch.num_sequences)
    out = run_sampler(sampler, t, index, ref, torch.Generator().manual_seed(0))
    return ref, out


def test_bf16_scores_give_the_fp32_decisions_within_tolerance() -> None:
    """Tolerance: bf16 logits carry ~3 significant digits, so log-probs move by ~1e-2; we
    require fp32 inputs to the sampler, the same acceptance rate within 0.02, the same
    accept/reject decision on >= 95 % of tokens, and weights within 5 % where both accept."""
    spec = ModelSpec(vocab_size=V, hidden_size=64, num_layers=2, num_heads=4)
    policy = build_model(spec)
    rollout_model = build_model(ModelSpec(vocab_size=V, hidden_size=32, num_layers=1, num_heads=2))
    engine = HFRolloutEngine(rollout_model, pad_token_id=0)
    params = SamplingParams(1.0, 0, 1.0, 12, (1,), logprobs_k=4)
    batch = engine.generate([[3, 4, 5], [6, 7]] * 4, 4, params, torch.Generator().manual_seed(0))
    ref32, out32 = _decide(policy, batch, torch.float32)
    ref16, out16 = _decide(policy, batch, torch.bfloat16)
    assert ref16.logp.dtype == torch.float32 and ref16.candidates is not None
    assert all(c.dtype in (torch.float32, torch.long) for c in ref16.candidates)
    resp = batch.response_mask.bool()
    assert (ref16.logp - ref32.logp)[resp].abs().max() < 0.1
    rate32, rate16 = (
        float(out32.metrics["obrs/accept_rate"]),
        float(out16.metrics["obrs/accept_rate"]),
    )
    assert math.isclose(rate32, rate16, abs_tol=0.02)
    agree = (out32.mask == out16.mask)[resp].float().mean()
    assert agree >= 0.95, agree
    both = (out32.mask * out16.mask).bool()
    assert both.sum() > 0
    torch.testing.assert_close(out16.weights[both], out32.weights[both], rtol=0.05, atol=1e-3)
    assert out16.weights.dtype == torch.float32


RUN_SHAPES = {
    # micro-batches, and rollouts decoded in two chunks of whole groups
    "bf16-mixed": ["trainer.micro_batch_size=4", "rollout.generation_batch_size=8"],
    # one minibatch in one pass: every old log-prob comes from the update's own forward
    "bf16-true": ["algo.minibatches=1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("precision", list(RUN_SHAPES))
def test_bf16_runs_train_with_finite_losses(
    precision: str, tmp_path: Path, warmstart_cache: Path
) -> None:
    overrides = [
        *tiny_overrides(tmp_path / "run", warmstart_cache, steps=2),
        f"trainer.precision={precision}",
        "sampler.topk=4",
        "rollout.logprobs_k=4",
        *RUN_SHAPES[precision],
    ]
    assert main(["--config", str(DEFAULT_CONFIG), *overrides]) == 0
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert len(rows) == 2
    for row in rows:
        for key in ("loss/policy", "loss/rollout", "distill/loss", "obrs/accept_rate"):
            assert math.isfinite(row[key]), (key, row)
        assert row["train/skipped_updates"] == 0
        assert abs(row["obrs/accept_rate"] - 0.9) < 0.1
