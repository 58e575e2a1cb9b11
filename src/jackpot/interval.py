"""Numeric intervals with open or closed ends: the allowed range of a config key or a sampler
parameter, checked and printed (``(0, 1]``) the same way everywhere. Imports nothing heavy."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Interval"]


@dataclass(frozen=True)
class Interval:
    """``low .. high``; an infinite end is open unless ``high_open`` says otherwise."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool | None = None
    """None: open at an infinite ``high``, closed at a finite one."""

    def __contains__(self, value: float) -> bool:
        """Whether ``value`` (a real number) lies inside; NaN never does."""
        v = float(value)
        above = v > self.low if self.low_open else v >= self.low
        below = v < self.high if self._high_open() else v <= self.high
        return not math.isnan(v) and above and below

    def __str__(self) -> str:
        """``[1, inf)``, ``(0, 1]``: brackets for closed ends, parentheses for open ones."""
        close = ")" if self._high_open() else "]"
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{close}"

    def _high_open(self) -> bool:
        return self.high == math.inf if self.high_open is None else self.high_open
