"""The rollouts of an RL step: its prompts and its generator, shared by the trainer and the
asynchronous rollout worker, so both sample step ``s`` from the same prompts and random stream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from jackpot.rollout.batch import RolloutBatch, concat_rollouts
from jackpot.rollout.engine import RolloutEngine, SamplingParams
from jackpot.step import prompt_indices, seeded_generator
from jackpot.tasks.synthetic import Example

__all__ = ["generate", "step_rollout"]


def generate(
    engine: RolloutEngine,
    tokenizer: Any,
    examples: Sequence[Example],
    group: int,
    params: SamplingParams,
    generator: torch.Generator,
    batch_limit: int | None = None,
    calls_for: int = 0,
) -> RolloutBatch:
    """Roll out ``group`` responses per example, at most ``batch_limit`` rows per engine call.

    ``calls_for``: make at least as many engine calls as this many examples would (a sharded
    model's ranks must decode in step); the extra calls' rollouts come last and are dropped.
    """
    ids = [tokenizer.encode(e.prompt) for e in examples]
    per_call = len(ids) if batch_limit is None else max(batch_limit // group, 1)  # whole groups
    chunks = [
        engine.generate(ids[i : i + per_call], group, params, generator)
        for i in range(0, len(ids), per_call)
    ]
    extra = 0 if batch_limit is None else math.ceil(calls_for / per_call) - len(chunks)
    for _ in range(extra):
        engine.generate(ids[-1:], group, params, generator)
    batch = chunks[0] if len(chunks) == 1 else concat_rollouts(chunks)
    return batch.with_texts(
        prompts=[e.prompt for e in examples for _ in range(group)],
        answers=[e.answer for e in examples for _ in range(group)],
    )


def step_rollout(
    engine: RolloutEngine,
    tokenizer: Any,
    train_examples: Sequence[Example],
    step: int,
    *,
    seed: int,
    prompts_per_step: int,
    group: int,
    params: SamplingParams,
    batch_limit: int | None,
    rank: int = 0,
    world: int = 1,
    device: torch.device | str = "cpu",
) -> RolloutBatch:
    """The rollouts of RL step ``step`` on ``rank``: its seeded prompt draw, sampled with the
    step's rollout stream (stream 0 of :func:`~jackpot.step.seeded_generator`)."""
    idx = prompt_indices(len(train_examples), step, prompts_per_step, seed, rank, world)
    generator = seeded_generator(seed, step, rank, 0, device)
    examples = [train_examples[i] for i in idx]
    return generate(engine, tokenizer, examples, group, params, generator, batch_limit)
