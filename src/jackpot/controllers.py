"""Closed-loop control of the distillation weight to hold a target actor-policy mismatch.

The paper's limitations section suggests adapting the distillation strength; this is the
proportional, multiplicative controller of Ziegler et al. (2019, adaptive KL penalty):
``coef *= 1 + clip((kl - target) / target, -0.2, 0.2) * steps / horizon``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["DistillController"]


@dataclass
class DistillController:
    """Raises ``coef`` while the measured mismatch KL is above ``target``, lowers it below."""

    coef: float
    target: float
    low: float = 0.01
    high: float = 10.0
    horizon: float = 10.0
    """RL steps over which an error of 20 % moves ``coef`` by 20 %."""

    def __post_init__(self) -> None:
        if not self.target > 0:
            raise ValueError(f"target must be > 0, got {self.target}")
        if not 0 < self.low <= self.high:
            raise ValueError(f"need 0 < low <= high, got low={self.low}, high={self.high}")
        self.coef = min(max(self.coef, self.low), self.high)

    def update(self, kl: float) -> float:
        """Feed one step's measured KL; return the new ``coef`` (unchanged for a non-finite KL)."""
        if not math.isfinite(kl):
            return self.coef
        error = min(max((kl - self.target) / self.target, -0.2), 0.2)
        self.coef = min(max(self.coef * (1 + error / self.horizon), self.low), self.high)
        return self.coef

    def state_dict(self) -> dict[str, float]:
        """Everything needed to resume."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore from :meth:`state_dict`."""
        for key, value in state.items():
            setattr(self, key, float(value))
