"""Shared fixtures: a tiny, fast version of the default config for trainer tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"

PROMPTS = [[1, 5, 6, 7], [1, 8], [1, 9, 9, 4, 3, 3, 10]]
"""Ragged: the shorter prompts are left-padded, so the attention mask matters."""
SIZES: dict[str, Any] = {
    "vocab_size": 20,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention
    "max_position_embeddings": 64,
}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def family_model(family: str) -> torch.nn.Module:
    """A random float64 model of ``family``: biased QKV, GQA with llama3 rope, q/k norms."""
    torch.manual_seed(0)
    if family == "qwen2":
        model: torch.nn.Module = Qwen2ForCausalLM(Qwen2Config(**SIZES))
    elif family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**SIZES, rope_parameters=LLAMA3_ROPE))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(**SIZES, head_dim=16))
    return model.double().eval()


@pytest.fixture(scope="session")
def warmstart_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One warm-start cache for the whole session, so tiny models are fine-tuned once."""
    return tmp_path_factory.mktemp("warmstart")


@pytest.fixture
def cpu_mesh(tmp_path: Path) -> Iterator[Any]:
    """A one-process gloo group and its CPU device mesh, for ``fully_shard`` in this process."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        yield dist.device_mesh.init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def tiny_overrides(run_dir: Path, cache_dir: Path, steps: int = 2) -> list[str]:
    """The default config shrunk to seconds: tiny models, 1-digit addition, short rollouts."""
    return [
        f"run.dir={run_dir}",
        f"warmstart.cache_dir={cache_dir}",
        "warmstart.steps=150",
        "warmstart.policy_steps=60",
        "policy.hidden_size=32",
        "policy.num_layers=2",
        "policy.num_heads=2",
        "rollout_model.hidden_size=16",
        "rollout_model.num_layers=1",
        "rollout_model.num_heads=2",
        "task.name=addition",
        "task.digits=1",
        "task.num_train=80",
        "task.num_eval=8",
        "rollout.prompts_per_step=4",
        "rollout.group_size=4",
        "rollout.max_new_tokens=3",
        f"trainer.max_steps={steps}",
        "trainer.eval_every=1",
        "trainer.eval_samples=2",
        "trainer.checkpoint_every=1",
        "trainer.num_threads=1",
        "run.plot=false",
    ]
