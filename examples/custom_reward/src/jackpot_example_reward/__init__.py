"""``digit_overlap``: partial credit, the share of the answer's characters the completion gets
right position by position (``"120"`` for ``"123"`` scores 2/3)."""

from __future__ import annotations

from collections.abc import Sequence


def digit_overlap(
    prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]
) -> list[float]:
    """One reward in [0, 1] per completion; the lists are aligned (jackpot's reward signature)."""
    if not len(prompts) == len(completions) == len(answers):
        raise ValueError("prompts, completions and answers must have one length")
    scores = []
    for completion, answer in zip(completions, answers, strict=True):
        got, want = completion.strip(), answer.strip()
        hits = sum(g == w for g, w in zip(got, want, strict=False))
        scores.append(hits / max(len(want), len(got), 1))
    return scores
