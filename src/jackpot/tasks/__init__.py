"""Tasks: synthetic verifiable problems, local datasets, a char tokenizer and reward functions."""

from jackpot.tasks.datasets import DatasetFormatError, load_examples, load_jsonl, load_parquet
from jackpot.tasks.rewards import (
    RewardFn,
    available_rewards,
    exact_match,
    get_reward,
    math_equivalence,
)
from jackpot.tasks.synthetic import TASKS, Example, TaskSpec, TaskSplits, make_task
from jackpot.tasks.tokenizer import CharTokenizer

__all__ = [
    "TASKS",
    "CharTokenizer",
    "DatasetFormatError",
    "Example",
    "RewardFn",
    "TaskSpec",
    "TaskSplits",
    "available_rewards",
    "exact_match",
    "get_reward",
    "load_examples",
    "load_jsonl",
    "load_parquet",
    "make_task",
    "math_equivalence",
]
