"""Fixtures for the vLLM engine tests: one tiny model and one engine for the whole session.

These tests need vLLM (``nox -s vllm`` builds a venv with the CPU build) and are kept out of
the plain ``tests`` session. vLLM starts in about 10-30 s on a CPU, so the engine is shared;
a test that changes its weights puts the original ones back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from jackpot.models import ModelSpec, build_model
from jackpot.rollout.vllm import VLLMRolloutEngine

VOCAB = 12
PAD, EOS = 0, 2
# Head size 32: vLLM's CPU attention supports 32, 64, 80, ... (not the 16 of hidden 64 / 4 heads).
SPEC = ModelSpec(vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=2)
ENGINE_OPTIONS = {"kv_cache_memory_gib": 0.1, "max_model_len": 256, "enforce_eager": True}


# vLLM's CPU build imports a torch API that torch 2.13 deprecates; not ours to fix.
_VLLM_WARNINGS = ("ignore:`torch.distributed.reduce_op` is deprecated:FutureWarning",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Let the warnings vLLM itself raises pass (pytest turns warnings into errors)."""
    for item in items:
        for rule in _VLLM_WARNINGS:
            item.add_marker(pytest.mark.filterwarnings(rule))


@pytest.fixture(scope="session")
def model() -> torch.nn.Module:
    """A tiny random Qwen2 over a 12-token vocabulary (fp32)."""
    return build_model(SPEC)


@pytest.fixture(scope="session")
def engine(
    model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMRolloutEngine]:
    """The engine under test, started once on a saved copy of ``model``."""
    directory: Path = tmp_path_factory.mktemp("vllm_model")
    yield VLLMRolloutEngine.from_model(model, directory, PAD, max_logprobs=VOCAB, **ENGINE_OPTIONS)
