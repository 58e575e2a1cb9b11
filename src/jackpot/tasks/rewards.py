"""Verifiable rewards as plain callables, registered in the entry-point group ``jackpot.rewards``.

A reward is ``fn(prompts, completions, answers) -> list[float]`` over aligned lists, so it can
be called directly in a test or from any trainer. :func:`get_reward` finds one by name among
the installed entry points (ours: ``exact_match``, ``math_equiv``); third-party packages add
theirs by declaring an entry point in the same group.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Callable, Sequence
from fractions import Fraction
from importlib.metadata import entry_points
from typing import Any

__all__ = [
    "RewardFn",
    "available_rewards",
    "exact_match",
    "get_reward",
    "math_equivalence",
]

RewardFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], list[float]]
"""``(prompts, completions, answers) -> rewards``, all of one length."""

GROUP = "jackpot.rewards"


def _check_lengths(prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]):
    """Raise unless the three lists align."""
    if not len(prompts) == len(completions) == len(answers):
        raise ValueError(
            f"prompts, completions and answers must have one length, got "
            f"{len(prompts)}, {len(completions)}, {len(answers)}"
        )


def exact_match(
    prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]
) -> list[float]:
    """1.0 where the completion equals the answer after stripping surrounding whitespace."""
    _check_lengths(prompts, completions, answers)
    return [float(c.strip() == a.strip()) for c, a in zip(completions, answers, strict=True)]


def math_equivalence(
    prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]
) -> list[float]:
    """1.0 where the completion is mathematically equal to the answer (``"0.5"`` == ``"1/2"``).

    Why sympy: string match scores ``"1/2"`` vs ``"0.5"`` or ``"2x+1"`` vs ``"1+2x"`` as wrong,
    which turns correct answers into zero reward. The check runs cheapest first: normalised
    strings (``\\boxed{}`` extracted, a small LaTeX subset rewritten, spaces, ``$`` and
    thousands separators removed), then exact rational numbers (``fractions.Fraction``), then
    ``sympy.simplify(a - b) == 0`` when sympy is installed. Sympy's parser evaluates Python,
    and powers can explode, so only short strings of digits, operators, single-letter
    variables, a few named functions and powers with small, non-nested exponents reach it;
    anything else falls back to the normalised string match.
    """
    _check_lengths(prompts, completions, answers)
    return [float(_equivalent(c, a)) for c, a in zip(completions, answers, strict=True)]


_LATEX_REWRITES = (
    (r"\\[dt]frac", r"\\frac"),
    (r"\\left|\\right|\\!|\\,|\\;|\\ |\$", ""),
    (r"\\cdot|\\times", "*"),
    (r"\\pi", "pi"),
)


def _normalise(text: str) -> str:
    """Canonical string: last ``\\boxed{}`` content, LaTeX subset rewritten, no spaces."""
    boxed = _last_boxed(text)
    text = boxed if boxed is not None else text
    for pattern, repl in _LATEX_REWRITES:
        text = re.sub(pattern, repl, text)
    while re.search(r"\d,\d{3}(?!\d)", text):  # thousands separators, left to right
        text = re.sub(r"(\d),(\d{3})(?!\d)", r"\1\2", text, count=1)
    # Innermost-first so nesting works: \frac{a}{b} -> (a)/(b), \sqrt{a} -> sqrt(a).
    while True:
        new = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", text)
        new = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", new)
        if new == text:
            break
        text = new
    text = text.replace("{", "(").replace("}", ")")
    return re.sub(r"\s+", "", text).rstrip(".")


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin - 1, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
    return None


def _as_fraction(text: str) -> Fraction | None:
    """Exact rational value of a plain number (``"-3"``, ``"0.5"``, ``"1/2"``, ``"1e3"``)."""
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


_SAFE_CHARS = re.compile(r"[0-9a-zA-Z+\-*/^().]{1,80}")
_SAFE_NAMES = frozenset({"sqrt", "pi", "sin", "cos", "tan", "log", "ln", "exp"})
_SAFE_POWER = re.compile(r"\^(?:-?\d{1,2}|[a-zA-Z]|\(-?\d{1,2}\))(?![\^\d])")
"""A power whose exponent is one small integer or one letter, and not itself raised."""


def _safe_for_sympy(text: str) -> bool:
    """Short, only whitelisted names, and powers only with small, non-nested exponents."""
    if not _SAFE_CHARS.fullmatch(text):
        return False
    names = re.findall(r"[a-zA-Z]+", text)
    if any(len(n) > 1 and n not in _SAFE_NAMES for n in names):
        return False
    powers = text.replace("**", "^")
    return powers.count("^") == len(_SAFE_POWER.findall(powers))


def _equivalent(completion: str, answer: str) -> bool:
    """Cheapest conclusive check first: strings, rationals, then sympy."""
    left, right = _normalise(completion), _normalise(answer)
    if left == right:
        return True
    left_value, right_value = _as_fraction(left), _as_fraction(right)
    if left_value is not None and right_value is not None:
        return left_value == right_value
    sympy = _sympy()
    if sympy is None or not (_safe_for_sympy(left) and _safe_for_sympy(right)):
        return False
    return _sympy_equal(sympy, left, right)


@functools.cache
def _sympy() -> Any:
    """The sympy module, or None when it is not installed (imported once, lazily)."""
    try:
        import sympy
    except ImportError:
        return None
    return sympy


def _sympy_equal(sympy: Any, left: str, right: str) -> bool:
    """``simplify(left - right) == 0``, or equal within 1e-9 relative; False on parse errors."""
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    transformations = (*standard_transformations, implicit_multiplication_application, convert_xor)
    local = {"ln": sympy.log}
    try:
        a = parse_expr(left, local_dict=dict(local), transformations=transformations)
        b = parse_expr(right, local_dict=dict(local), transformations=transformations)
        diff = sympy.simplify(a - b)
        if diff == 0:
            return True
        if diff.is_number and b.is_number:
            return bool(abs(complex(diff)) <= 1e-9 * max(1.0, abs(complex(b))))
    except (SyntaxError, TypeError, ValueError, AttributeError, ZeroDivisionError):
        return False
    return False


@functools.cache
def _registry() -> dict[str, RewardFn]:
    """Installed rewards by name; a broken plugin warns instead of crashing, duplicates warn."""
    found: dict[str, RewardFn] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in found:
            warnings.warn(
                f"duplicate reward {ep.name!r} in {GROUP} ({ep.value}); keeping the first",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        try:
            found[ep.name] = ep.load()
        except Exception as err:  # a broken third-party plugin must not break jackpot
            warnings.warn(f"could not load reward {ep.name!r}: {err}", RuntimeWarning, stacklevel=2)
    return found


def available_rewards() -> list[str]:
    """Names of the installed rewards, sorted."""
    return sorted(_registry())


def get_reward(name: str) -> RewardFn:
    """The reward registered as ``name`` in ``jackpot.rewards``; an unknown name lists them all."""
    registry = _registry()
    if name not in registry:
        raise ValueError(
            f"unknown reward {name!r}; installed rewards ({GROUP}): {available_rewards()}"
        )
    return registry[name]
