"""The rollout-engine interface and its sampling parameters (torch only).

An engine turns ``N`` prompts into ``N * G`` sampled responses and returns a
:class:`~jackpot.rollout.batch.RolloutBatch` recording the log-probs of the distribution each
token was drawn from. It knows nothing about rewards or losses (see ``architecture.md``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from jackpot.rollout.batch import RolloutBatch

__all__ = ["RolloutEngine", "SamplingParams"]


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are drawn; recorded with every batch because it defines ``p_inf``."""

    temperature: float = 1.0
    """Softmax temperature; 0 means greedy (``p_inf`` is then a point mass)."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 = off (transformers silently defaults to 50)."""
    top_p: float = 1.0
    """Nucleus mass kept after top-k; 1 = off."""
    max_new_tokens: int = 32
    """Responses stop here and are marked truncated (``finished == False``)."""
    stop_token_ids: tuple[int, ...] = ()
    """Tokens that end a response (EOS); the stop token itself is part of the response."""
    logprobs_k: int = 8
    """How many top log-probs of ``p_inf`` to record per position (the sampled token always)."""

    def __post_init__(self) -> None:
        """Validate ranges; each message names the offending field."""
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.logprobs_k < 1:
            raise ValueError(f"logprobs_k must be >= 1, got {self.logprobs_k}")
        if any(t < 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be >= 0, got {self.stop_token_ids}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``stop_token_ids`` as a list)."""
        out = asdict(self)
        out["stop_token_ids"] = list(self.stop_token_ids)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SamplingParams:
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing ones take defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown sampling parameter(s) {unknown}; known: {sorted(known)}")
        values = dict(data)
        if "stop_token_ids" in values:
            values["stop_token_ids"] = tuple(values["stop_token_ids"])
        return cls(**values)


class RolloutEngine(ABC):
    """Samples ``group_size`` responses per prompt and records ``p_inf`` for every token."""

    @abstractmethod
    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        group_size: int,
        params: SamplingParams,
        generator: torch.Generator,
    ) -> RolloutBatch:
        """Roll out ``len(prompt_ids) * group_size`` responses; randomness only from ``generator``.

        ``prompt_ids``: ragged token-id lists (no padding). Rows of the result are grouped:
        row ``i * group_size + j`` is sample ``j`` of prompt ``i`` and has ``group_ids == i``.
        """

    @abstractmethod
    def sync_weights(self, model: nn.Module) -> None:
        """Make the next :meth:`generate` sample from ``model``'s current weights.

        Called before every rollout whose model trains; engines that hold their own copy of
        the weights (vLLM) copy them in, engines that wrap ``model`` itself have nothing to do.
        """
