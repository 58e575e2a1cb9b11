"""``JackpotModule``: the LightningModule that holds the policy and the rollout model.

One training step is one RL iteration (paper, Algorithm 1): roll out (no grad) -> rewards ->
advantages -> old log-probs -> ``ppo_epochs`` x minibatches of one joint update of both
models (policy PPO with the sampler's mask and weights, rollout-model RL, distillation).
The module orchestrates only: every formula is in ``jackpot.step``, ``jackpot.losses``,
``jackpot.functional`` or a sampler. An "epoch" of the Trainer is one RL step, so Lightning's
epoch counter is the RL step and a checkpoint taken at an epoch end resumes exactly.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from jackpot.config import JackpotConfig, as_dict
from jackpot.controllers import DistillController
from jackpot.metrics import (
    MetricTracker,
    device_memory_stats,
    mean_and_pass_at_k,
    minibatch_stats,
    param_checksum,
    rollout_stats,
    timing_stats,
)
from jackpot.packing import packing_refusal
from jackpot.rollout.batch import RolloutBatch
from jackpot.rollout.engine import RolloutEngine
from jackpot.rollout.factory import build_engine, sampling_params
from jackpot.rollout.files import load_step_rollouts, resolve_rollout_files
from jackpot.rollout.generation import generate, step_rollout
from jackpot.rollout.sampling import sampling_logprobs
from jackpot.samplers.base import Sampler, SamplerOutput
from jackpot.step import (
    StepTensors,
    TargetScores,
    auto_micro_batch_size,
    empty_target_scores,
    forward_logits,
    joint_loss,
    linear_warmup,
    merge_micro_stats,
    micro_batches,
    minibatch_denominators,
    minibatch_indices,
    run_sampler,
    seeded_generator,
    step_tensors,
    target_scores,
    token_logp,
)
from jackpot.tasks.synthetic import Example
from jackpot.training.async_rollouts import AsyncRollouts, restored_rollouts, uses_worker
from jackpot.training.sharding import clip_grad_norm, is_sharded, shard_models

__all__ = ["JackpotModule", "NonFiniteError"]

RewardFn = Callable[[list[str], list[str], list[str]], list[float]]

# Loss parts divided by the whole minibatch's denominator: a minibatch's value is their sum.
_SUMMED_STATS = frozenset({"loss/policy", "loss/rollout", "distill/loss"})


def _can_fuse(params: Sequence[Tensor]) -> bool:
    """Whether torch's fused AdamW kernel applies: floating parameters on CPU or CUDA (one
    kernel per parameter group instead of a Python loop per tensor)."""
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


def _without(rows: Tensor, drop: Tensor) -> Tensor:
    """``rows`` less the entries of ``drop``, in order."""
    return rows[~torch.isin(rows, drop)]


@dataclass
class StepState:
    """What one RL step keeps between its passes: per-token ``(N, T)`` and top-k ``(N, T, m)``
    tensors (full logits only for small-vocabulary samplers), filled micro-batch by micro-batch.
    """

    rollout: RolloutBatch
    tensors: StepTensors
    ref: TargetScores
    """p_ref's scores of every row (its ``logp`` is ``tensors.logp_ref``)."""
    logits_inf: Tensor | None
    """``(N, T, V)`` full log p_inf, rescored from the rollout model (full-logit samplers only)."""
    ref_pending: Tensor
    """Rows whose p_ref comes from the first update's forward (nothing changed the policy yet)."""
    w_pending: Tensor
    """Rows whose p_w_old comes from the first update's forward of the rollout model."""
    micro: int = 1
    """Sequences per forward pass (``trainer.micro_batch_size``, or chosen from the budgets)."""
    fixed: SamplerOutput | None = None
    """The sampler's decisions for the whole step when p_target = ref."""

    def topk_inf(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """The recorded top-k of p_inf (ids, log-probs) of ``rows``."""
        cpu_rows = rows.to(self.rollout.topk_ids.device)
        return self.rollout.topk_ids[cpu_rows], self.rollout.topk_logp[cpu_rows]


class NonFiniteError(RuntimeError):
    """Too many consecutive updates had a non-finite loss or gradient."""


class JackpotModule(L.LightningModule):
    """Policy + rollout model, two optimisers, manual optimisation.

    With ``cfg.rollout.files`` set (offline decoupled training) the rollouts of each step are
    read from a file instead of generated, and ``rollout_model`` may be None: it is not used.
    """

    def __init__(
        self,
        cfg: JackpotConfig,
        policy: nn.Module,
        rollout_model: nn.Module | None,
        tokenizer: Any,
        train_examples: Sequence[Example],
        eval_examples: Sequence[Example],
        reward_fn: RewardFn,
        sampler: Sampler,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.cfg = cfg
        self.policy = policy
        self.rollout_model = rollout_model
        self.tokenizer = tokenizer
        self.train_examples = list(train_examples)
        self.eval_examples = list(eval_examples)
        self.reward_fn = reward_fn
        self.sampler = sampler
        self.tracker = MetricTracker()
        self.packed: dict[str, bool] = {}
        """Per model name: whether its scoring/training forward packs the real tokens (decided
        at its first forward, after the strategy has wrapped it)."""
        self.engines: dict[str, RolloutEngine] = {}
        """One rollout engine per model for the whole run (``policy``, ``rollout_model``)."""
        self.rollout_worker: AsyncRollouts | None = None
        """The asynchronous rollout worker (``rollout.max_staleness`` >= 1), while training."""
        self.restored_rollouts: list[Any] = []
        """A resumed asynchronous run's rollouts sampled before its checkpoint."""
        self.rollout_files: list[Path] | None = (
            None if cfg.rollout.files is None else resolve_rollout_files(cfg.rollout.files)
        )
        if rollout_model is None and self.rollout_files is None and cfg.algo.mode == "decoupled":
            raise ValueError("decoupled mode needs a rollout model unless rollout.files is set")
        self.train_rollout = (
            cfg.algo.train_rollout and cfg.algo.mode == "decoupled" and rollout_model is not None
        )
        # Warm starts hand models back in eval mode; the tiny models have no dropout, but
        # Lightning (rightly) warns about modules left in eval mode.
        self.policy.train()
        if rollout_model is not None:
            rollout_model.requires_grad_(self.train_rollout)
            rollout_model.train()
        self.controller = (
            DistillController(
                cfg.algo.distill_coef,
                cfg.algo.distill_target_kl,
                *cfg.algo.distill_coef_bounds,
            )
            if cfg.algo.distill_target_kl is not None
            else None
        )
        self.nonfinite_streak = 0
        self.micro_printed = False
        """Whether the automatic micro-batch size was printed (once per run)."""
        self.last_metrics: dict[str, float] = {}
        self.last_logged: float | None = None
        """When the previous RL step's metrics were logged (``perf/period_s``)."""
        # The top-k record of p_inf only feeds top-k samplers: others record the sampled
        # token alone, and the decode loop skips the top-k work.
        self.sampling = sampling_params(
            cfg.rollout,
            tokenizer.eos_token_id,
            logprobs_k=None if "topk" in sampler.needs() else 1,
        )

    # ------------------------------------------------------------------ Lightning plumbing

    def train_dataloader(self) -> DataLoader:
        """One placeholder item per epoch: the prompts of RL step ``s`` are chosen from ``s``."""
        return DataLoader(cast(Any, [0]), batch_size=1)

    def configure_model(self) -> None:
        """Under ``trainer.strategy=fsdp``, shard both models layer by layer (FSDP2), once."""
        if self.cfg.trainer.strategy == "fsdp" and not is_sharded(self.policy):
            shard_models(
                [self.policy, self.rollout_model],
                cast(Any, self.device_mesh)["data_parallel"],  # set by the strategy
                self.cfg.trainer.precision,
            )

    def configure_optimizers(self) -> Any:
        """AdamW + linear warm-up for the policy, and for the rollout model when it trains."""
        optimizers, schedulers = [], []
        for model, oc in self._trained_models():
            params = list(model.parameters())
            opt = torch.optim.AdamW(
                params, lr=oc.lr, weight_decay=oc.weight_decay, fused=_can_fuse(params)
            )
            optimizers.append(opt)
            schedulers.append(
                torch.optim.lr_scheduler.LambdaLR(opt, linear_warmup(oc.warmup_steps))
            )
        return optimizers, schedulers

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add the state Lightning does not know about."""
        checkpoint["jackpot"] = {
            "rl_step": self.current_epoch,
            "config": as_dict(self.cfg),
            "nonfinite_streak": self.nonfinite_streak,
            "controller": None if self.controller is None else self.controller.state_dict(),
        }
        if self.rollout_worker is not None:
            pending = self.rollout_worker.pending_state(self.current_epoch + 1)
            checkpoint["jackpot"]["async_rollouts"] = pending

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the controller, the skip counter and an asynchronous run's rollouts."""
        state = checkpoint.get("jackpot", {})
        self.nonfinite_streak = int(state.get("nonfinite_streak", 0))
        if self.controller is not None and state.get("controller"):
            self.controller.load_state_dict(state["controller"])
        self.restored_rollouts = restored_rollouts(state, self.cfg, "the checkpoint")

    def on_train_start(self) -> None:
        """Start the rollout worker of an asynchronous run at the step it starts or resumes
        from (the models hold that version's weights by now)."""
        if uses_worker(self.cfg):
            name, model = self._sampling_model()
            self.rollout_worker = AsyncRollouts(
                self.cfg,
                model,
                self.tokenizer,
                self.train_examples,
                self.sampling,
                first_step=self.current_epoch,
                restored=self.restored_rollouts,
                sends_weights=self._trains(name),
                work_dir=Path(self.cfg.run.dir) / "engines" / f"{name}-worker",
            )
            self.restored_rollouts = []

    def on_train_end(self) -> None:
        """Stop the rollout worker once training is over."""
        self.stop_rollout_worker()

    def stop_rollout_worker(self) -> None:
        """Stop the rollout worker, if one runs (also after an error or Ctrl-C)."""
        if self.rollout_worker is not None:
            self.rollout_worker.close()
            self.rollout_worker = None

    # ------------------------------------------------------------------ the RL iteration

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """Roll out, score, and update both models on the same trajectories.

        Lightning's ``bf16-true`` sets torch's default dtype to bf16 around this hook; the
        step's own tensors (rewards, masks, the OBRS math) are created in float32 regardless,
        while the models compute in their parameters' dtype.
        """
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            self._rl_step()
        finally:
            torch.set_default_dtype(previous)

    def _rl_step(self) -> None:
        """One RL iteration: rollout, rewards, scores, minibatch updates, metrics."""
        step = self.current_epoch
        if step == 0 and self.cfg.trainer.eval_every:  # the starting point of every curve
            start, prompts = self.evaluate(step)
            renamed = {f"eval/start_{k.split('/')[1]}": v for k, v in start.items()}
            self.tracker.update(renamed, weight=prompts)
        t0 = time.perf_counter()
        rollout = self._rollout(step)
        t_rollout = time.perf_counter() - t0
        rewards = self._rewards(rollout)
        t1 = time.perf_counter()
        gen = seeded_generator(self.cfg.run.seed, step, self.global_rank, 1, self.device)
        order = seeded_generator(self.cfg.run.seed, step, self.global_rank, 4, self.device)
        plan = [
            minibatch_indices(rollout.num_sequences, self.cfg.algo.minibatches, order)
            for _ in range(self.cfg.algo.ppo_epochs)
        ]
        state = self._score(rollout, rewards, first=plan[0][0])
        opts = self._optimizers()
        n_tokens = 0
        for minibatches in plan:
            for index in minibatches:
                self._minibatch_update(state, index.to(self.device), gen, opts)
                n_tokens += int(state.tensors.response_mask[index].sum())
        self._log_step(step, rollout, rewards, t_rollout, time.perf_counter() - t1, n_tokens)

    def _score(self, rollout: RolloutBatch, rewards: Tensor, first: Tensor) -> StepState:
        """Old log-probs of both models (no grad) in micro-batches, advantages, full p_inf
        where a sampler needs it.

        The rows of the first minibatch are left to its update's forward when it runs in one
        micro-batch (p_ref) or at all (p_w_old): nothing has changed the models since the
        rollout, so that forward gives the same values without a separate pass.
        """
        need_full = "logits" in self.sampler.needs()
        rescore = need_full and self.cfg.algo.mode == "decoupled" and self.rollout_files is None
        if need_full and not rescore:
            raise ValueError(
                f"sampler {self.sampler.name!r} needs the full p_inf, which only the decoupled "
                "mode generating its rollouts has (the rollout model is rescored)"
            )
        n, t = rollout.response_ids.shape
        first = first.to(self.device)
        micro = self._micro_batch_size(rollout)
        none = first[:0]
        ref_pending = first if len(micro_batches(first, micro)) == 1 else none
        w_pending = first if self.train_rollout and not rescore else none
        feeds_sampler = self._fixed_target()  # p_ref's candidate sets / logits are needed
        ref = empty_target_scores(
            n,
            t,
            topk_m=self._candidate_width(rollout)
            if feeds_sampler and "topk" in self.sampler.needs()
            else None,
            vocab=self._vocab_size() if need_full and feeds_sampler else None,
            device=self.device,
            dtype=self._score_dtype(),
        )
        logp_w_old = (
            torch.full((n, t), math.nan, device=self.device, dtype=self._score_dtype())
            if self.train_rollout
            else None
        )
        tensors = step_tensors(
            rollout.response_ids,
            rollout.response_mask,
            rewards.to(self.device),
            rollout.group_ids,
            rollout.logp_inf,
            ref.logp,
            logp_w_old,
            self.cfg.algo.advantage,
        )
        logits_inf = (
            torch.full(
                (n, t, self._vocab_size()), math.nan, device=self.device, dtype=self._score_dtype()
            )
            if rescore
            else None
        )
        state = StepState(rollout, tensors, ref, logits_inf, ref_pending, w_pending, micro)
        rows_all = torch.arange(n, device=self.device)
        with torch.no_grad():
            for rows in micro_batches(_without(rows_all, ref_pending), micro):
                logits = self._response_logits(self.policy, rollout, rows)
                ref.put(rows, self._target_scores(state, rows, logits, fixed=True))
            if self.train_rollout or rescore:
                for rows in micro_batches(_without(rows_all, w_pending), micro):
                    logits_w = self._response_logits(self._rollout_net(), rollout, rows)
                    self._put_rollout_scores(state, rows, logits_w)
        return state

    def _minibatch_update(
        self, state: StepState, index: Tensor, gen: torch.Generator, opts: list[Any]
    ) -> None:
        """One joint update of both models on rows ``index``, in micro-batches."""
        cfg = self.cfg
        pieces = micro_batches(index, state.micro)
        held = None  # the policy's logits with grad, when the minibatch is one micro-batch
        if len(pieces) == 1:
            held = self._response_logits(self.policy, state.rollout, index)
        if state.ref_pending.numel() and held is not None:  # the first minibatch: p_ref = p_new
            state.ref.put(index, self._target_scores(state, index, held, fixed=True))
            state.ref_pending = state.ref_pending[:0]
        sampled = self._sample(state, index, held, pieces, gen)
        denominators = minibatch_denominators(
            sampled.norm_mask,
            state.tensors.response_mask[index],
            cfg.algo.agg,
            state.rollout.params.max_new_tokens,
        )
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        finite, stats, offset = True, [], 0
        for rows in pieces:
            local = torch.arange(offset, offset + len(rows), device=self.device)
            offset += len(rows)
            logits_new = (
                held
                if held is not None
                else self._response_logits(self.policy, state.rollout, rows)
            )
            logits_w = (
                self._response_logits(self._rollout_net(), state.rollout, rows)
                if self.train_rollout
                else None
            )
            if logits_w is not None and state.w_pending.numel():
                self._put_rollout_scores(state, rows, logits_w)
            piece = sampled.select(local)
            loss = joint_loss(
                state.tensors,
                rows,
                logits_new,
                piece,
                logits_w=logits_w,
                distill_coef=self._distill_coef(),
                distill_direction=cfg.algo.distill_direction,
                clip_eps=cfg.algo.clip_eps,
                clip=cfg.algo.clip,
                agg=cfg.algo.agg,
                rollout_tis_cap=cfg.algo.rollout_tis_cap,
                max_len=state.rollout.params.max_new_tokens,
                denominators=denominators,
                rollout_rl=cfg.algo.rollout_rl,
                kind=cfg.algo.policy_loss,
                clip_eps_high=cfg.algo.clip_eps_high,
                clip_ratio_c=cfg.algo.clip_ratio_c,
                bypass=cfg.algo.bypass_old_logprobs,
            )
            # Agreed by every rank: a backward's gradient collectives need all of them.
            finite = self.trainer.strategy.reduce_boolean_decision(
                bool(torch.isfinite(loss.total)), all=True
            )
            if not finite:  # skip this update; the rest of the minibatch cannot repair it
                break
            self.manual_backward(loss.total)
            stats.append(
                {
                    **loss.stats,
                    **minibatch_stats(
                        loss, logits_new, logits_w, state.tensors.response_mask[rows]
                    ),
                }
            )
        state.w_pending = state.w_pending[:0]
        self._step(opts, finite)
        self.tracker.update(sampled.metrics)
        if stats:
            self.tracker.update(merge_micro_stats(stats, _SUMMED_STATS))
        self.tracker.update({"data/all_rejected_minibatch_frac": float(sampled.mask.sum() == 0)})

    def _sample(
        self,
        state: StepState,
        index: Tensor,
        held: Tensor | None,
        pieces: list[Tensor],
        gen: torch.Generator,
    ) -> SamplerOutput:
        """The sampler's mask and weights for rows ``index``.

        p_target = ref: decided once for the whole step (a budget's lambda is the batch's).
        p_target = new: recomputed from the current, detached policy (Algorithm 1), from the
        update's own forward when the minibatch is one micro-batch, else by a no-grad pass.
        """
        if self._fixed_target():
            if state.fixed is None:
                everything = torch.arange(state.rollout.num_sequences, device=self.device)
                state.fixed = run_sampler(
                    self.sampler, state.tensors, everything, state.ref, gen, state.logits_inf
                )
            return state.fixed.select(index)
        if held is not None:
            target = self._target_scores(state, index, held, fixed=False)
        else:
            with torch.no_grad():
                target = TargetScores.cat(
                    [
                        self._target_scores(
                            state,
                            rows,
                            self._response_logits(self.policy, state.rollout, rows),
                            fixed=False,
                        )
                        for rows in pieces
                    ]
                )
        logits_inf = None if state.logits_inf is None else state.logits_inf[index]
        return run_sampler(self.sampler, state.tensors, index, target, gen, logits_inf)

    def _target_scores(
        self, state: StepState, rows: Tensor, logits: Tensor, fixed: bool
    ) -> TargetScores:
        """Reduce a micro-batch's policy logits to what the sampler needs of them.

        ``fixed``: these are p_ref's scores, which feed the sampler only when p_target = ref.
        """
        feeds_sampler = fixed == self._fixed_target()
        needs = self.sampler.needs()
        topk = "topk" in needs and feeds_sampler
        return target_scores(
            logits,
            state.tensors.response_ids[rows],
            topk_inf=state.topk_inf(rows) if topk else None,
            topk_k=self.sampler.topk_k() if topk else None,
            keep_logits="logits" in needs and feeds_sampler,
        )

    def _put_rollout_scores(self, state: StepState, rows: Tensor, logits_w: Tensor) -> None:
        """Record p_w_old (and the full p_inf for full-logit samplers) of ``rows``."""
        logits_w = logits_w.detach()
        if state.tensors.logp_w_old is not None:
            state.tensors.logp_w_old[rows] = token_logp(logits_w, state.tensors.response_ids[rows])
        if state.logits_inf is not None:
            r = self.cfg.rollout  # logits are already scaled by the temperature: truncate only
            logp = sampling_logprobs(logits_w, 1.0, r.top_k, r.top_p)
            state.logits_inf[rows] = logp.to(state.logits_inf.dtype)

    def _micro_batch_size(self, rollout: RolloutBatch) -> int:
        """``trainer.micro_batch_size``, or the largest size within the token and logit budgets
        for this step's padded lengths (printed once per run, logged every step)."""
        trainer = self.cfg.trainer
        size = trainer.micro_batch_size
        if size is None:
            t = rollout.response_ids.shape[1]
            size = auto_micro_batch_size(
                rollout.prompt_ids.shape[1] + t,
                t,
                self._vocab_size(),
                trainer.micro_batch_tokens,
                trainer.micro_batch_logits_gb,
            )
            if not self.micro_printed and self.global_rank == 0:
                tqdm.write(
                    f"micro-batches: at most {size} sequences per forward pass at {t} response "
                    "tokens "
                    f"(trainer.micro_batch_tokens={trainer.micro_batch_tokens}, "
                    f"trainer.micro_batch_logits_gb={trainer.micro_batch_logits_gb:g}; "
                    "set trainer.micro_batch_size to fix it)",
                    file=sys.stderr,
                )
            self.micro_printed = True
        self.tracker.update({"perf/micro_batch_size": float(size)})
        return size

    def _score_dtype(self) -> torch.dtype:
        """float32 for the scores a step keeps (bf16 models included), float64 for fp64 ones."""
        dtype = next(self.policy.parameters()).dtype
        return torch.float64 if dtype == torch.float64 else torch.float32

    def _fixed_target(self) -> bool:
        """Whether the sampler aligns to p_ref (decided once per step) rather than p_new."""
        return self.sampler.p_target == "ref"

    def _candidate_width(self, rollout: RolloutBatch) -> int:
        """m of the candidate sets: the recorded top-k of p_inf plus the policy's top-k."""
        return int(rollout.topk_ids.shape[-1]) + self.sampler.topk_k()

    # ------------------------------------------------------------------ helpers

    def _rollout(self, step: int) -> RolloutBatch:
        """This step's rollouts: from the asynchronous rollout worker, from this step's rollout
        file, or sampled here from this step's prompts."""
        cfg = self.cfg
        if self.rollout_worker is not None:
            batch, stats = self.rollout_worker.rollout(step, self._sampling_model()[1])
            self.tracker.update(stats)
            return batch.to(self.device)
        if self.rollout_files is not None:
            needs = self.sampler.needs()
            return load_step_rollouts(
                self.rollout_files,
                step,
                temperature=cfg.rollout.temperature,
                sampler_topk=self.sampler.topk_k() if "topk" in needs else None,
                vocab_size=self._vocab_size(),
                rank=self.global_rank,
                world=self.trainer.world_size,
            ).to(self.device)
        return step_rollout(
            self._engine(),
            self.tokenizer,
            self.train_examples,
            step,
            seed=cfg.run.seed,
            prompts_per_step=cfg.rollout.prompts_per_step,
            group=cfg.rollout.group_size,
            params=self.sampling,
            batch_limit=cfg.rollout.generation_batch_size,
            rank=self.global_rank,
            world=self.trainer.world_size,
            device=self.device,
        )

    def _sampling_model(self, policy: bool = False) -> tuple[str, nn.Module]:
        """``(name, model)`` of the model that samples: the policy when ``policy`` (evaluation)
        or on-policy, else the rollout model."""
        if policy or self.cfg.algo.mode == "on_policy":
            return "policy", self.policy
        return "rollout_model", self._rollout_net()

    def _trains(self, name: str) -> bool:
        """Whether the sampling model ``name`` changes during the run (its weights must move)."""
        return name == "policy" or self.train_rollout

    def _engine(self, policy: bool = False) -> RolloutEngine:
        """The policy's engine (on-policy runs, evaluation) or the rollout model's, built on
        first use and given the model's current weights when that model trains."""
        name, model = self._sampling_model(policy)
        if name not in self.engines:
            work_dir = Path(self.cfg.run.dir) / "engines" / f"{name}-rank{self.global_rank}"
            self.engines[name] = build_engine(
                self.cfg.rollout, model, self.tokenizer.pad_token_id, work_dir
            )
        engine = self.engines[name]
        if self._trains(name):
            start = time.perf_counter()
            engine.sync_weights(model)
            self.tracker.update({"perf/weight_sync_s": time.perf_counter() - start})
        return engine

    def _rollout_net(self) -> nn.Module:
        """The rollout model; an error in offline runs built without one."""
        if self.rollout_model is None:
            raise ValueError("this run has no rollout model (rollouts are read from files)")
        return self.rollout_model

    def _vocab_size(self) -> int:
        """Output size of the policy: the vocabulary every rollout must use."""
        return int(cast(Any, self.policy).get_output_embeddings().weight.shape[0])

    def _rewards(self, rollout: RolloutBatch) -> Tensor:
        """``(N,)`` rewards recorded with the rollouts (a file's), else from the reward function."""
        if rollout.rewards is not None:
            return rollout.rewards.float().cpu()
        if rollout.prompts is None or rollout.answers is None:
            raise ValueError("rollouts carry neither rewards nor prompt and answer texts to score")
        return torch.as_tensor(
            self.reward_fn(rollout.prompts, self._decode(rollout), rollout.answers),
            dtype=torch.float32,
        )

    def _decode(self, rollout: RolloutBatch) -> list[str]:
        return [self.tokenizer.decode(r) for r in rollout.response_lists(without_stop=True)]

    def _response_logits(
        self, model: nn.Module, rollout: RolloutBatch, index: Tensor | None = None
    ) -> Tensor:
        """``(n, T, V)`` logits of ``model`` for the response tokens at the sampling temperature."""
        ids, mask = rollout.full_sequences()
        if index is not None:
            ids, mask = ids[index], mask[index]
        name = self._name(model)
        if name not in self.packed:
            self.packed[name] = self.cfg.trainer.remove_padding and self._packs(model, name)
        return forward_logits(
            model,
            ids,
            mask,
            rollout.prompt_ids.shape[1],
            self.cfg.rollout.temperature,
            packed=self.packed[name],
        )

    def _packs(self, model: nn.Module, name: str) -> bool:
        """Whether ``model`` honours packed sequences; a warning names why not."""
        reason = packing_refusal(model)
        if reason is not None:
            rank_zero_warn(
                f"trainer.remove_padding: {name} keeps the padded forward ({reason})",
                category=UserWarning,
            )
        return reason is None

    def _optimizers(self) -> list[Any]:
        opts = self.optimizers()
        return list(opts) if isinstance(opts, (list, tuple)) else [opts]

    def _distill_coef(self) -> float:
        return self.controller.coef if self.controller is not None else self.cfg.algo.distill_coef

    def _step(self, opts: list[Any], finite: bool) -> None:
        """Clip and step every optimiser on the accumulated gradient, or skip a bad update."""
        ok = finite
        if ok:
            norms = [
                clip_grad_norm(model.parameters(), oc.grad_clip)
                for model, oc in self._trained_models()
            ]
            for (model, _), norm in zip(self._trained_models(), norms, strict=True):
                self.tracker.update({f"grad_norm/{self._name(model)}": norm})
            ok = all(bool(torch.isfinite(n)) for n in norms)
        if ok:
            self.nonfinite_streak = 0
            for opt in opts:
                opt.step()
            for sched in self._schedulers():
                sched.step()
        else:
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            self.nonfinite_streak += 1
        self.tracker.update({"train/skipped_updates": float(not ok)})
        if self.nonfinite_streak >= self.cfg.algo.max_nonfinite_skips:
            raise NonFiniteError(
                f"{self.nonfinite_streak} consecutive updates had a non-finite loss or gradient "
                f"(algo.max_nonfinite_skips={self.cfg.algo.max_nonfinite_skips}); stopping"
            )

    def _trained_models(self) -> list[tuple[nn.Module, Any]]:
        out = [(self.policy, self.cfg.policy_optim)]
        if self.train_rollout:
            out.append((self._rollout_net(), self.cfg.rollout_optim))
        return out

    def _name(self, model: nn.Module) -> str:
        return "policy" if model is self.policy else "rollout"

    def _schedulers(self) -> list[Any]:
        scheds = self.lr_schedulers()
        if scheds is None:
            return []
        return list(scheds) if isinstance(scheds, (list, tuple)) else [scheds]

    def _log_step(
        self,
        step: int,
        rollout: RolloutBatch,
        rewards: Tensor,
        t_rollout: float,
        t_train: float,
        n_tokens: int,
    ) -> None:
        """Add the step-level metrics, evaluate when due, sync, feed the controller, log."""
        self.tracker.update(
            rollout_stats(rewards, rollout.group_ids, rollout.response_mask, rollout.finished)
        )
        generate_s = rollout.metadata.get("generate_s")  # sampled by the rollout worker
        self.tracker.update(
            timing_stats(rollout.num_tokens, t_rollout, n_tokens, t_train, generate_s)
        )
        self.tracker.update(device_memory_stats(self.device))
        if self.train_rollout:
            self.tracker.update({"distill/coef": self._distill_coef()})
        if self.cfg.trainer.eval_every and (step + 1) % self.cfg.trainer.eval_every == 0:
            evaluation, prompts = self.evaluate(step)
            self.tracker.update(evaluation, weight=prompts)
        if self.trainer.world_size > 1 and not is_sharded(self.policy):  # replicas only
            self.tracker.update({"dist/param_divergence": self._param_divergence()})
        values = self.tracker.compute()
        now = time.perf_counter()
        if self.last_logged is not None:  # everything a user waits for, between two steps
            values["perf/period_s"] = now - self.last_logged
        self.last_logged = now
        if self.controller is not None and math.isfinite(values.get("mismatch/kl_k3", math.nan)):
            self.controller.update(values["mismatch/kl_k3"])
        self.last_metrics = values
        for logger in self.loggers:
            logger.log_metrics(values, step=step)

    @torch.no_grad()
    def _param_divergence(self) -> Tensor:
        """Largest difference of a parameter checksum across ranks: 0 when replicas agree."""
        models = [self.policy] if self.rollout_model is None else [self.policy, self.rollout_model]
        checksum = torch.stack([param_checksum(m) for m in models])
        gathered = cast(Tensor, self.all_gather(checksum))  # (world, models)
        return (gathered.amax(0) - gathered.amin(0)).max()

    @torch.no_grad()
    def evaluate(self, step: int) -> tuple[dict[str, Tensor], int]:
        """mean@k and pass@k of the policy on this rank's share of the held-out prompts, and
        that share's size (the weight of this rank's means when the tracker syncs them).

        A sharded policy's forward takes part in every rank's all-gathers, so a rank with a
        short share makes as many engine calls as the longest share needs.
        """
        world = self.trainer.world_size
        examples = self.eval_examples[self.global_rank :: world]
        longest = math.ceil(len(self.eval_examples) / world) if is_sharded(self.policy) else 0
        batch = generate(
            self._engine(policy=True),
            self.tokenizer,
            examples,
            self.cfg.trainer.eval_samples,
            self.sampling,
            seeded_generator(self.cfg.run.seed, step, self.global_rank, 2, self.device),
            self.cfg.rollout.generation_batch_size,
            calls_for=longest,
        )
        rewards = torch.as_tensor(
            self.reward_fn(batch.prompts or [], self._decode(batch), batch.answers or [])
        )
        mean_k, pass_k = mean_and_pass_at_k(rewards, batch.group_ids.cpu())
        return {"eval/accuracy": mean_k, "eval/pass_at_k": pass_k}, len(examples)
