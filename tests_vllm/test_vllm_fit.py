"""``python -m jackpot.fit`` with ``rollout.engine=vllm``: decoupled and on-policy runs."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jackpot.training.csv_logger import read_metrics

ROOT = Path(__file__).resolve().parents[1]

# Head sizes 32 (vLLM's CPU attention has no 16); a 1-digit task, 3 steps.
TINY = [
    "warmstart.steps=0",
    "warmstart.policy_steps=0",
    "policy.hidden_size=64",
    "policy.num_layers=2",
    "policy.num_heads=2",
    "rollout_model.hidden_size=32",
    "rollout_model.num_layers=1",
    "rollout_model.num_heads=1",
    "task.name=addition",
    "task.digits=1",
    "task.num_train=80",
    "task.num_eval=8",
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "rollout.max_new_tokens=3",
    "trainer.max_steps=3",
    "trainer.eval_samples=2",
    "trainer.checkpoint_every=3",
    "trainer.num_threads=1",
    "run.plot=false",
    "rollout.engine=vllm",
    "rollout.vllm.kv_cache_memory_gib=0.05",
    "rollout.vllm.max_model_len=64",
    "rollout.vllm.enforce_eager=true",
]


def _fit(run_dir: Path, config: str, *overrides: str) -> list[dict[str, float]]:
    """Run ``python -m jackpot.fit`` on ``configs/<config>`` shrunk by TINY; its metric rows."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jackpot.fit",
            "--config",
            str(ROOT / "configs" / config),
            f"run.dir={run_dir}",
            f"warmstart.cache_dir={run_dir.parent / 'warmstart'}",
            *TINY,
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rows = read_metrics(run_dir / "metrics.csv")
    assert [r["step"] for r in rows] == [0.0, 1.0, 2.0]
    return rows


def test_decoupled_fit_with_vllm_and_a_training_rollout_model(tmp_path: Path) -> None:
    """Three steps run; every step syncs weights; one engine per model, evaluation included."""
    run_dir = tmp_path / "run"
    rows = _fit(
        run_dir,
        "default.yaml",
        "algo.mode=decoupled",
        "algo.train_rollout=true",
        "trainer.eval_every=3",
    )
    for row in rows:
        assert 0.0 < row["perf/weight_sync_s"] < 60.0
        assert math.isfinite(row["loss/policy"]) and math.isfinite(row["obrs/accept_rate"])
    assert "eval/accuracy" in rows[-1]
    engines = sorted(p.name for p in (run_dir / "engines").iterdir())
    assert engines == ["policy-rank0", "rollout_model-rank0"]


def test_on_policy_fit_samples_from_the_current_policy(tmp_path: Path) -> None:
    """On-policy, the recorded p_inf is the policy's at every step (KL ~ 0) while it changes.

    Rewards of an untrained model are all 0, so weight decay makes the policy move; without
    the sync, the KL is about 1e-3 from step 1 on.
    """
    run_dir = tmp_path / "run"
    rows = _fit(
        run_dir,
        "on_policy.yaml",
        "trainer.eval_every=0",
        "policy_optim.lr=0.05",
        "policy_optim.weight_decay=1.0",
    )
    assert all(abs(row["mismatch/kl_k3"]) < 1e-6 for row in rows)
    start = load_file(run_dir / "engines" / "policy-rank0" / "model.safetensors")
    end = torch.load(run_dir / "checkpoints" / "step-000003.ckpt", weights_only=False)
    key = "model.embed_tokens.weight"
    moved = (end["state_dict"][f"policy.{key}"] - start[key]).abs().max()
    assert float(moved) > 1e-3, "the policy did not change: the KL check would prove nothing"


def test_a_rollout_worker_with_vllm_samples_from_the_current_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The asynchronous worker builds its own vLLM engine and reloads each weight version:
    forced to k = 0 (the worker samples step s from the weights after update s), on-policy,
    the recorded p_inf is the trained policy's at every step while the policy moves."""
    import jackpot.module
    from jackpot.config import load_config
    from jackpot.fit import run

    monkeypatch.setattr(jackpot.module, "uses_worker", lambda cfg: True)
    overrides = [
        f"run.dir={tmp_path / 'run'}",
        f"warmstart.cache_dir={tmp_path / 'warmstart'}",
        *TINY,
        "trainer.eval_every=0",  # no vLLM engine in this process: the worker's only
        "rollout.num_threads=1",
        "policy_optim.lr=0.05",
        "policy_optim.weight_decay=1.0",
    ]
    rows = read_metrics(
        run(load_config(ROOT / "configs" / "on_policy.yaml", overrides)).metrics_csv
    )
    assert [r["async/staleness"] for r in rows] == [0.0, 0.0, 0.0]
    assert all(abs(row["mismatch/kl_k3"]) < 1e-6 for row in rows)
    assert all(row["perf/weight_sync_s"] >= 0 for row in rows)
    engines = tmp_path / "run" / "engines"
    assert sorted(p.name for p in engines.iterdir()) == ["policy-worker"]
    start = load_file(engines / "policy-worker" / "model.safetensors")  # version 0
    end = torch.load(tmp_path / "run" / "checkpoints" / "step-000003.ckpt", weights_only=False)
    key = "model.embed_tokens.weight"
    moved = (end["state_dict"][f"policy.{key}"] - start[key]).abs().max()
    assert float(moved) > 1e-3, "the policy did not change: the KL check would prove nothing"
