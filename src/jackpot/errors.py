"""Shared wording of errors about the files a user hands jackpot (data, models, checkpoints)."""

from __future__ import annotations

__all__ = ["describe", "excerpt"]


def describe(exc: BaseException, limit: int = 200) -> str:
    """``TypeName: first line of the message`` (at most ``limit`` characters): the cause of a
    failure in a third-party loader, short enough to sit inside a one-line error."""
    lines = str(exc).strip().splitlines()
    first = lines[0].strip() if lines else ""
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def excerpt(text: str, limit: int = 80) -> str:
    """``repr`` of ``text`` cut to ``limit`` characters: user text quoted on one line."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"
