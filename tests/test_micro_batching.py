"""The streaming step through the real module: micro-batches and reused old log-probs change
neither the gradient nor the scored log-probs (fp64 tiny models, one RL step)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from jackpot.config import SamplerConfig, load_config
from jackpot.fit import build_module
from jackpot.module import JackpotModule
from jackpot.step import forward_logits, token_logp

from .conftest import DEFAULT_CONFIG, tiny_overrides

SAMPLERS = {
    "obrs-topk-ref": ["sampler.topk=4", "rollout.logprobs_k=4"],
    "obrs-topk-new": ["sampler.topk=4", "rollout.logprobs_k=4", "sampler.p_target=new"],
    "obrs-exact": [],
    "tis": ["sampler.name=tis"],
    "icepop": ["sampler.name=icepop"],
    # sequence-level policy losses, the new aggregations, the bypass of the old log-probs
    "gspo-seq-mean-token-sum": [
        "sampler.topk=4",
        "rollout.logprobs_k=4",
        "algo.policy_loss=gspo",
        "algo.agg=seq-mean-token-sum",
    ],
    "gmpo-token-sum-bypass": [
        "algo.policy_loss=gmpo",
        "algo.agg=token-sum",
        "algo.bypass_old_logprobs=true",
    ],
}
# What else the split run changes, none of which may change the gradient: activation
# checkpointing, and the models' padded forward instead of the packed one.
SPLIT_ONLY = {
    "obrs-topk-ref": [
        "policy.gradient_checkpointing=true",
        "rollout_model.gradient_checkpointing=true",
    ],
    "obrs-topk-new": ["trainer.remove_padding=false"],
}
# How the split run splits: a fixed size, or (tis) the automatic size from a token budget of
# one token, which leaves one sequence per pass.
SPLIT_BY = {"tis": ["trainer.micro_batch_tokens=1"]}


def _one_step(
    tmp_path: Path, cache: Path, extra: list[str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """Run one RL step; return the gradients of the first update, the step's scores and the
    models as they were before it."""
    overrides = [*tiny_overrides(tmp_path / "run", cache, steps=1), "trainer.eval_every=0"]
    overrides += ["algo.minibatches=2", "rollout.max_new_tokens=4", *extra]
    baseline = "sampler.name=tis" in extra or "sampler.name=icepop" in extra
    cfg = load_config(DEFAULT_CONFIG, [o for o in overrides if not o.startswith("sampler.name")])
    if baseline:  # a token-level baseline with its own defaults
        cfg.sampler = SamplerConfig(name=extra[0].split("=")[1])
    module = build_module(cfg)
    module.double()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    seen: dict[str, Any] = {}
    score, step = JackpotModule._score, JackpotModule._step

    def keep_state(self: JackpotModule, *args: Any, **kwargs: Any) -> Any:
        seen["state"] = score(self, *args, **kwargs)
        return seen["state"]

    def keep_grads(self: JackpotModule, opts: list[Any], finite: bool) -> None:
        if "grads" not in seen:
            seen["grads"] = {
                n: p.grad.clone() for n, p in self.named_parameters() if p.grad is not None
            }
        step(self, opts, finite)

    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with monkeypatch.context() as patch:  # undone before the next run patches again
        patch.setattr(JackpotModule, "_score", keep_state)
        patch.setattr(JackpotModule, "_step", keep_grads)
        trainer.fit(module)
    seen["before"], seen["module"] = before, module
    return seen


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_micro_batches_and_reused_old_logprobs_leave_the_update_unchanged(
    sampler: str, tmp_path: Path, warmstart_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = _one_step(tmp_path / "a", warmstart_cache, SAMPLERS[sampler], monkeypatch)
    split = _one_step(
        tmp_path / "b",
        warmstart_cache,
        [
            *SAMPLERS[sampler],
            *SPLIT_BY.get(sampler, ["trainer.micro_batch_size=3"]),
            *SPLIT_ONLY.get(sampler, []),
        ],
        monkeypatch,
    )
    assert whole["state"].micro >= len(whole["state"].tensors.advantages)  # the automatic size
    assert split["state"].micro == (1 if sampler in SPLIT_BY else 3)
    assert whole["grads"].keys() == split["grads"].keys() and whole["grads"]
    assert any("rollout_model" in n for n in whole["grads"])  # both models trained
    for name, grad in whole["grads"].items():
        torch.testing.assert_close(split["grads"][name], grad, rtol=1e-9, atol=1e-12, msg=name)
    # The scores the step used equal a separate forward of the models before the update.
    for seen in (whole, split):
        module, state = seen["module"], seen["state"]
        module.load_state_dict(seen["before"], strict=False)
        ids, mask = state.rollout.full_sequences()
        prompt_len, temp = state.rollout.prompt_ids.shape[1], module.cfg.rollout.temperature
        resp = state.tensors.response_mask.bool()
        with torch.no_grad():
            for model, logp in (
                (module.policy, state.tensors.logp_ref),
                (module.rollout_model, state.tensors.logp_w_old),
            ):
                fresh = token_logp(
                    forward_logits(model, ids, mask, prompt_len, temp), state.tensors.response_ids
                )
                torch.testing.assert_close(logp[resp], fresh[resp], rtol=1e-9, atol=1e-10)
