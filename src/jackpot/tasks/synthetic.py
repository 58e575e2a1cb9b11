"""Synthetic verifiable tasks: multi-digit addition (default), sorting digits, counting a letter.

Problems come from ``random.Random(seed)`` (stable across platforms and Python versions), so a
spec always yields the same data. A problem goes to the eval split when a hash of its prompt
falls in a fixed bucket, so the splits never overlap and the eval split does not change when
``n_train`` does.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["TASKS", "Example", "TaskSpec", "TaskSplits", "make_task"]


@dataclass(frozen=True)
class Example:
    """One problem: the prompt text and the reference answer a reward compares against."""

    prompt: str
    answer: str


@dataclass(frozen=True)
class TaskSpec:
    """Which synthetic task to generate, how much of it, and from which seed."""

    name: str = "addition"
    """One of :data:`TASKS`: ``addition``, ``sort`` or ``count``."""
    n_train: int = 2000
    """Training problems (SFT warm start and RL prompts)."""
    n_eval: int = 200
    """Held-out problems, disjoint from the training ones."""
    seed: int = 0
    """Seed of the problem stream."""
    max_digits: int = 2
    """addition: operands have 1 to ``max_digits`` digits."""
    max_length: int = 6
    """sort / count: strings have 2 to ``max_length`` characters."""

    def __post_init__(self) -> None:
        """Validate; messages name the field."""
        if self.name not in TASKS:
            raise ValueError(f"unknown task {self.name!r}; available: {sorted(TASKS)}")
        if self.n_train < 0 or self.n_eval < 0:
            raise ValueError(f"n_train and n_eval must be >= 0, got {self.n_train}, {self.n_eval}")
        if self.max_digits < 1:
            raise ValueError(f"max_digits must be >= 1, got {self.max_digits}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (used in cache keys and rollout metadata)."""
        return asdict(self)


@dataclass(frozen=True)
class TaskSplits:
    """Train and eval problems of one spec; no prompt appears in both."""

    train: list[Example]
    eval: list[Example]


def _addition(rng: random.Random, spec: TaskSpec) -> Example:
    """``"37+5="`` -> ``"42"``."""
    a, b = (rng.randrange(10 ** rng.randint(1, spec.max_digits)) for _ in range(2))
    return Example(f"{a}+{b}=", str(a + b))


def _sort(rng: random.Random, spec: TaskSpec) -> Example:
    """``"sort 3141="`` -> ``"1134"``."""
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(2, spec.max_length)))
    return Example(f"sort {digits}=", "".join(sorted(digits)))


def _count(rng: random.Random, spec: TaskSpec) -> Example:
    """``"count a in abca="`` -> ``"2"`` (letters from ``abcd``)."""
    text = "".join(rng.choice("abcd") for _ in range(rng.randint(2, spec.max_length)))
    letter = rng.choice("abcd")
    return Example(f"count {letter} in {text}=", str(text.count(letter)))


TASKS: dict[str, Callable[[random.Random, TaskSpec], Example]] = {
    "addition": _addition,
    "sort": _sort,
    "count": _count,
}
"""Task name -> problem generator; the only place that knows every task."""

_EVAL_BUCKETS = 8
"""A prompt is an eval candidate when its hash is 0 modulo this (1 in 8 of the stream)."""


def _is_eval(prompt: str) -> bool:
    """Stable split assignment from a hash of the prompt (not Python's salted ``hash``)."""
    return hashlib.sha256(prompt.encode()).digest()[0] % _EVAL_BUCKETS == 0


def make_task(spec: TaskSpec) -> TaskSplits:
    """Generate the train and eval problems of ``spec``, deterministically and disjointly."""
    rng = random.Random(spec.seed)
    generate = TASKS[spec.name]
    train: list[Example] = []
    evals: list[Example] = []
    seen: set[str] = set()
    budget = 50 * (spec.n_train + _EVAL_BUCKETS * spec.n_eval) + 1000
    for _ in range(budget):
        if len(train) >= spec.n_train and len(evals) >= spec.n_eval:
            break
        example = generate(rng, spec)
        if example.prompt in seen:
            continue
        seen.add(example.prompt)
        split, size = (evals, spec.n_eval) if _is_eval(example.prompt) else (train, spec.n_train)
        if len(split) < size:
            split.append(example)
    if len(train) < spec.n_train or len(evals) < spec.n_eval:
        raise ValueError(
            f"task {spec.name!r} has too few distinct problems for n_train={spec.n_train} and "
            f"n_eval={spec.n_eval} (found {len(train)} and {len(evals)}); raise max_digits or "
            "max_length, or ask for fewer"
        )
    return TaskSplits(train=train, eval=evals)
