"""Rewards: ``exact_match``, ``math_equiv`` through math-verify (pinned equivalence table, time
limit against adversarial completions, no code execution, any thread), the missing-extra
message, and a third-party reward installed from ``examples/custom_reward``."""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jackpot.tasks import rewards
from jackpot.tasks.rewards import MathVerifier, exact_match, get_reward, math_equivalence

HAS_MATH_VERIFY = importlib.util.find_spec("math_verify") is not None
needs_math_verify = pytest.mark.skipif(
    not HAS_MATH_VERIFY, reason="math-verify not installed (pip install -e '.[dev]' installs it)"
)

# (completion, answer): the completion is the untrusted side, the answer the reference.
EQUIVALENT = [
    ("0.5", "1/2"),  # exact rationals, no math-verify needed
    ("1,000", "1000"),  # thousands separator, string path
    ("The answer is \\boxed{3}.", "3"),  # boxed extraction, string path
    ("\\boxed{\\frac{1}{2}}", "0.5"),
    ("1+2x", "2x+1"),  # a bare formula is read whole, not as its first number
    ("$\\sqrt{8}$", "2\\sqrt{2}"),
    ("$\\frac{\\pi}{2}$", "\\pi/2"),
    ("$x^2-1$", "(x-1)(x+1)"),
    ("\\boxed{\\dfrac{3}{4}}", "0.75"),
    ("$2\\cdot 3^2$", "18"),
    ("\\boxed{\\{1,2\\}}", "\\{2,1\\}"),  # sets are unordered
    ("$x = 5$", "5"),
    ("$\\sin^2 x + \\cos^2 x$", "1"),
    ("so the result is $\\frac{6}{8}$", "3/4"),
    ("\\boxed{[1,2)}", "[1,2)"),
]
NOT_EQUIVALENT = [
    ("3", "4"),
    ("0.5", "0.51"),
    ("x+1", "x-1"),
    ("\\boxed{2}", "3"),
    ("$\\sqrt{2}$", "1.41"),
    ("hello", "3"),
    ("", "3"),
    ("2x", "2y"),
    ("$\\frac{1}{3}$", "0.33"),
    ("1+2x", "2"),  # the leading number of a formula is not its value
    ("\\boxed{(1,2)}", "[1,2]"),  # open vs closed interval
]


@pytest.fixture(scope="module")
def verifier() -> Iterator[MathVerifier]:
    """One checker (one worker process) for the table; a generous limit for a loaded machine."""
    with MathVerifier(time_limit_s=60.0) as v:
        yield v


def test_exact_match_strips_whitespace_and_checks_lengths() -> None:
    assert exact_match(["p", "p"], [" 12\n", "13"], ["12", "12"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="one length"):
        exact_match(["p"], ["1", "2"], ["1"])


def test_registered_names() -> None:
    assert get_reward("exact_match") is exact_match
    assert get_reward("math_equiv") is math_equivalence
    with pytest.raises(ValueError, match="unknown reward 'nope'; installed rewards"):
        get_reward("nope")


@needs_math_verify
def test_equivalence_table(verifier: MathVerifier) -> None:
    assert len(EQUIVALENT) >= 10 and len(NOT_EQUIVALENT) >= 6
    completions = [c for c, _ in EQUIVALENT + NOT_EQUIVALENT]
    answers = [a for _, a in EQUIVALENT + NOT_EQUIVALENT]
    got = verifier(["q"] * len(answers), completions, answers)
    want = [1.0] * len(EQUIVALENT) + [0.0] * len(NOT_EQUIVALENT)
    rows = zip(completions, answers, got, want, strict=True)
    wrong = [(c, a, g) for c, a, g, w in rows if g != w]
    assert not wrong, wrong


def test_cheap_paths_decide_without_math_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    """Equal normalised strings and plain rationals never reach the worker."""

    def no_worker(*args: object) -> bool:
        raise AssertionError("math-verify was called")

    v = MathVerifier()
    monkeypatch.setattr(v, "_verify", no_worker)
    assert v.equivalent("\\boxed{1,000}", "1000")
    assert v.equivalent("0.25", "1/4")
    assert not v.equivalent("0.25", "1/3")


ADVERSARIAL = [
    "\\boxed{9^{9^{9^{9}}}}",  # a power tower no machine can evaluate
    "$9^9^9^9^9$",
    "(" * 3000 + "1" + ")" * 3000,  # deeply nested: parser recursion
]


@needs_math_verify
def test_adversarial_completions_are_cut_off_by_the_time_limit(verifier: MathVerifier) -> None:
    """Each comparison ends within the limit (the worker is killed) and the next one works."""
    workers = set()
    try:
        for completion in ADVERSARIAL:
            assert verifier.equivalent("1+2x", "2x+1")  # a warm worker, lazy imports done
            assert verifier._proc is not None
            workers.add(verifier._proc.pid)
            verifier.time_limit_s = 1.0
            start = time.perf_counter()
            assert not verifier.equivalent(completion, "1")
            assert time.perf_counter() - start < 6.0  # 1 s limit; margin for a busy machine
            verifier.time_limit_s = 60.0
    finally:
        verifier.time_limit_s = 60.0
    assert len(workers) > 1  # at least one comparison ran over and its worker was killed


@pytest.mark.parametrize(
    "completion",
    [
        "1,000," * 5000,  # thousands separators: was one regex pass per comma
        "\\sqrt{" * 5000 + "2" + "}" * 5000,  # nested rewrites: one pass per level
        "1e100000000",  # Fraction() would compute 10**100000000
    ],
)
def test_untimed_cheap_path_is_fast_on_adversarial_text(
    completion: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The string and rational checks run in-process without a time limit, so they must stay
    cheap on any text; what they cannot decide goes to the timed worker (stubbed here)."""
    v = MathVerifier()
    monkeypatch.setattr(v, "_verify", lambda answer, completion: False)
    start = time.perf_counter()
    assert not v.equivalent(completion, "1")
    assert time.perf_counter() - start < 1.0


@needs_math_verify
def test_model_output_cannot_run_code(verifier: MathVerifier, tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    for completion in (
        f"__import__('os').system('touch {target}')",
        f"$__import__('os').system('touch {target}')$",
        f"\\boxed{{__import__('os').system('touch {target}')}}",
    ):
        assert not verifier.equivalent(completion, "0")
    assert not target.exists()


@needs_math_verify
def test_works_outside_the_main_thread(verifier: MathVerifier) -> None:
    """math-verify's own signal-based timeouts raise outside the main thread; ours do not."""
    results: list[list[float]] = []
    thread = threading.Thread(
        target=lambda: results.append(verifier(["q", "q"], ["1+2x", "x"], ["2x+1", "2x"]))
    )
    thread.start()
    thread.join()
    assert results == [[1.0, 0.0]]


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        rewards.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "math_verify" else real(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'jackpot\[math\]'"):
        MathVerifier()(["q"], ["1"], ["1"])


def test_time_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="time_limit_s=0"):
        MathVerifier(time_limit_s=0)


def test_custom_reward_example_is_installed_and_found() -> None:
    """``examples/custom_reward`` (installed by the ``tests`` nox session) registers
    ``digit_overlap`` in ``jackpot.rewards``; ``get_reward`` finds it by name."""
    if importlib.util.find_spec("jackpot_example_reward") is None:
        pytest.skip(
            "examples/custom_reward is not installed "
            "(pip install --no-deps ./examples/custom_reward; nox -s tests does it)"
        )
    rewards._registry.cache_clear()
    try:
        fn = get_reward("digit_overlap")
        assert fn(["q", "q", "q"], ["123", "120", "9"], ["123", "123", "123"]) == pytest.approx(
            [1.0, 2 / 3, 0.0]
        )
    finally:
        rewards._registry.cache_clear()
