"""Verifiable rewards as plain callables, registered in the entry-point group ``jackpot.rewards``.

A reward is ``fn(prompts, completions, answers) -> list[float]`` over aligned lists, so it can
be called directly in a test or from any trainer. :func:`get_reward` finds one by name among
the installed entry points (ours: ``exact_match``, ``math_equiv``); third-party packages add
theirs by declaring an entry point in the same group. :func:`checked_reward` wraps one for a
run: a reward that raises, or returns anything but one finite number per completion, stops the
run with a :class:`RewardError` naming it and the completion (NaN and inf are refused, never
dropped, as in rollout files).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import json
import logging
import math
import numbers
import os
import queue
import re
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from fractions import Fraction
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from jackpot.errors import describe, excerpt

__all__ = [
    "MathVerifier",
    "RewardError",
    "RewardFn",
    "available_rewards",
    "checked_reward",
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

    The ``math_equiv`` reward: cheap exact checks first, then Hugging Face's ``math-verify``
    (the checker behind TRL's and open-r1's accuracy rewards) with a time limit per comparison;
    see :class:`MathVerifier`. Needs the extra: ``pip install 'jackpot[math]'``.
    """
    return _default_verifier()(prompts, completions, answers)


_LATEX_REWRITES = (
    (r"\\[dt]frac", r"\\frac"),
    (r"\\left|\\right|\\!|\\,|\\;|\\ |\$", ""),
    (r"\\cdot|\\times", "*"),
    (r"\\pi", "pi"),
)


_CHEAP_MAX_CHARS = 1000
"""Longer texts skip the LaTeX rewriting (nested rewrites cost depth x length), so the untimed
cheap path stays linear in the length of a model's output."""


def _normalise(text: str) -> str:
    """Canonical string: last ``\\boxed{}`` content, LaTeX subset rewritten, no spaces."""
    boxed = _last_boxed(text)
    text = boxed if boxed is not None else text
    if len(text) <= _CHEAP_MAX_CHARS:
        for pattern, repl in _LATEX_REWRITES:
            text = re.sub(pattern, repl, text)
        text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)  # thousands separators
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


_HUGE_EXPONENT = re.compile(r"[eE][+-]?0*[1-9]\d{3,}")


def _as_fraction(text: str) -> Fraction | None:
    """Exact rational value of a plain number (``"-3"``, ``"0.5"``, ``"1/2"``, ``"1e3"``).

    Long texts and exponents past 999 are left to the timed check: ``Fraction("1e100000000")``
    computes ``10**100000000`` (a minute of CPU) before it can compare anything.
    """
    if len(text) > 100 or _HUGE_EXPONENT.search(text):
        return None
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


MATH_EXTRA_HINT = (
    "task.reward=math_equiv needs the optional dependency math-verify: "
    "pip install 'jackpot[math]' (or pip install 'math-verify>=0.8')"
)

_WORKER_MEMORY_BYTES = 4 << 30
"""Address-space cap of the worker (POSIX): a huge power fails with MemoryError, not swap."""


class MathVerifier:
    """Answer checker with a hard time limit per comparison, safe on untrusted model output.

    Order: normalised strings equal (``\\boxed{}`` extracted, a small LaTeX subset rewritten,
    spaces, ``$`` and thousands separators removed) -> equal; both plain rationals
    (``fractions.Fraction``) -> compared exactly; otherwise ``math_verify.parse`` both texts
    and ``math_verify.verify(answer, completion)``.

    Why a worker process: math-verify's own time limits use ``signal.alarm``, which works only
    in the main thread (a reward called from a data-loader or trainer thread raises), counts
    whole seconds, and cannot interrupt a long C-level computation such as the big-integer
    power of ``9^9^9^9``: the alarm is handled only when control returns to Python. So
    math-verify runs with its timeouts off in one persistent child process (started on first
    use, memory capped on POSIX) and the parent waits at most ``time_limit_s`` per comparison;
    on overrun, or a crash such as a stack overflow on a deeply nested expression, the child
    is killed, the pair scores 0 and the next comparison starts a fresh child. We never
    ``eval`` the text; math-verify parses LaTeX with an ANTLR grammar and hands sympy's
    ``parse_expr`` only strings of digits and operators.
    """

    def __init__(self, time_limit_s: float = 5.0, start_timeout_s: float = 120.0) -> None:
        if not time_limit_s > 0:
            raise ValueError(f"time_limit_s={time_limit_s!r} must be > 0")
        self.time_limit_s = float(time_limit_s)
        self.start_timeout_s = float(start_timeout_s)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]
    ) -> list[float]:
        """Score aligned lists; raises ``ModuleNotFoundError`` naming the extra without it."""
        _check_lengths(prompts, completions, answers)
        if importlib.util.find_spec("math_verify") is None:
            raise ModuleNotFoundError(MATH_EXTRA_HINT)
        return [float(self.equivalent(c, a)) for c, a in zip(completions, answers, strict=True)]

    def equivalent(self, completion: str, answer: str) -> bool:
        """Cheapest conclusive check first: normalised strings, rationals, then math-verify."""
        left, right = _normalise(completion), _normalise(answer)
        if left == right:
            return True
        left_value, right_value = _as_fraction(left), _as_fraction(right)
        if left_value is not None and right_value is not None:
            return left_value == right_value
        return self._verify(answer, completion)

    def _verify(self, answer: str, completion: str) -> bool:
        """One math-verify comparison in the worker, which is killed after ``time_limit_s``."""
        with self._lock:
            proc = self._ensure_worker()
            try:
                assert proc.stdin is not None
                proc.stdin.write(json.dumps([answer, completion]) + "\n")
                proc.stdin.flush()
                line = self._lines.get(timeout=self.time_limit_s)
            except (OSError, queue.Empty):
                line = None
            if line is None:  # over the time limit, or the worker died on this input
                self._stop()
                return False
            return line == "1"

    def _ensure_worker(self) -> subprocess.Popen[str]:
        """The running worker; started, and waited for until ready, if there is none."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._stop()
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])  # the directory holding ``jackpot``
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-c", "from jackpot.tasks.rewards import _serve; _serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env=env,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(proc, lines), daemon=True).start()
        self._proc, self._lines = proc, lines
        try:
            ready = lines.get(timeout=self.start_timeout_s)
        except queue.Empty:
            ready = None
        if ready != "ready":
            self._stop()
            raise RuntimeError(
                f"the math-verify worker did not start within {self.start_timeout_s:g} s; "
                f"check that `{sys.executable} -c 'import math_verify'` works ({MATH_EXTRA_HINT})"
            )
        return proc

    def _stop(self) -> None:
        """Kill the worker (if any) and reap it, so no process or pipe is left behind."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # a broken pipe to a killed worker
                    pipe.close()

    def close(self) -> None:
        """Stop the worker process (a later comparison starts a new one)."""
        with self._lock:
            self._stop()

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    """Forward the worker's output lines to ``lines``; ``None`` once it has exited."""
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.put(line.strip())
    except (OSError, ValueError):  # the pipe was closed under us by _stop
        pass
    lines.put(None)


@functools.cache
def _default_verifier() -> MathVerifier:
    """The process-wide checker behind ``math_equiv``; its worker is stopped at exit."""
    verifier = MathVerifier()
    atexit.register(verifier.close)
    return verifier


_DELIMITERS = ("$", "\\(", "\\[", "\\boxed")
_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")


def _for_math_verify(text: str) -> str:
    """A bare formula (no ``$``/``\\boxed``, no words) wrapped in ``$...$`` so math-verify
    reads all of it (``"2x+1"`` would otherwise yield the number 2); other text as it is."""
    if any(d in text for d in _DELIMITERS) or _WORD.search(text) or not text.strip():
        return text
    return f"${text.strip()}$"


def _serve() -> None:
    """Worker loop: ``[answer, completion]`` JSON lines in, ``1``/``0`` lines out.

    math-verify's own (signal) timeouts are off: the parent enforces the limit by killing us.
    """
    out, sys.stdout = sys.stdout, sys.stderr  # nothing a library prints can corrupt the protocol
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (_WORKER_MEMORY_BYTES, _WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):  # not POSIX, or a lower hard limit is set
        pass
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # "timeout disabled" warnings
    from math_verify import parse, verify

    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        answer, completion = json.loads(line)
        try:
            gold = parse(_for_math_verify(answer), parsing_timeout=None)
            pred = parse(_for_math_verify(completion), parsing_timeout=None)
            ok = bool(gold) and bool(pred) and verify(gold, pred, timeout_seconds=None)
        except Exception:  # MemoryError, RecursionError, parser bugs: not equivalent
            ok = False
        out.write("1\n" if ok else "0\n")
        out.flush()


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


class RewardError(ValueError):
    """A reward function raised, or returned other than one finite number per completion."""


def checked_reward(name: str, fn: RewardFn) -> RewardFn:
    """``fn`` (registered as ``name``) returning plain floats, or raising :class:`RewardError`
    that names ``task.reward`` and the completion at fault (the original error chained)."""

    def call(
        prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]
    ) -> list[float]:
        try:
            values = fn(prompts, completions, answers)
        except Exception as exc:
            at = _first_failing(fn, prompts, completions, answers)
            which = (
                f"a batch of {len(completions)} completions (none found to fail alone)"
                if at is None
                else _completion(completions, answers, at)
            )
            raise RewardError(
                f"task.reward={name!r} raised {describe(exc)} on {which}; fix the reward"
            ) from exc
        return _as_rewards(name, values, completions, answers)

    return call


_LOCATE_BUDGET_S = 10.0
"""How long :func:`_first_failing` may spend re-scoring completions one by one."""


def _first_failing(
    fn: RewardFn, prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]
) -> int | None:
    """Index of the first completion ``fn`` raises on when scored alone; None when none does,
    or when ``_LOCATE_BUDGET_S`` is spent (a slow reward must not stall the error)."""
    start = time.perf_counter()
    for i, (p, c, a) in enumerate(zip(prompts, completions, answers, strict=False)):
        if time.perf_counter() - start > _LOCATE_BUDGET_S:
            return None
        try:
            fn([p], [c], [a])
        except Exception:
            return i
    return None


def _completion(completions: Sequence[str], answers: Sequence[str], i: int) -> str:
    """``completion i of n: '...' (answer '...')``, cut to fit one line."""
    answer = f" (answer {excerpt(str(answers[i]), 40)})" if i < len(answers) else ""
    return f"completion {i} of {len(completions)}: {excerpt(str(completions[i]))}{answer}"


def _as_rewards(
    name: str, values: Any, completions: Sequence[str], answers: Sequence[str]
) -> list[float]:
    """``values`` as one finite float per completion, or :class:`RewardError` saying what is off."""
    where = f"task.reward={name!r}"
    n = len(completions)
    if hasattr(values, "tolist"):  # a tensor or an array
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise RewardError(
            f"{where} returned a {type(values).__name__}; it must return a list of {n} numbers"
        )
    if len(values) != n:
        raise RewardError(
            f"{where} returned {len(values)} rewards for {n} completions; it must return one "
            "per completion"
        )
    out = []
    for i, value in enumerate(values):
        if not isinstance(value, numbers.Real):
            raise RewardError(
                f"{where} returned {repr(value)[:40]} ({type(value).__name__}) for "
                f"{_completion(completions, answers, i)}; rewards must be numbers"
            )
        if not math.isfinite(float(value)):
            raise RewardError(
                f"{where} returned {float(value)} for {_completion(completions, answers, i)}; "
                "rewards must be finite (NaN and inf are refused)"
            )
        out.append(float(value))
    return out
