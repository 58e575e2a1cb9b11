"""Shared fixtures: a tiny, fast version of the default config for trainer tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"


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
