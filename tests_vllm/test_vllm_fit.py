"""``python -m jackpot.fit`` with ``rollout.engine=vllm``: decoupled, the rollout model trains."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

from jackpot.training.csv_logger import read_metrics

ROOT = Path(__file__).resolve().parents[1]

# Head sizes 32 (vLLM's CPU attention has no 16); a 1-digit task, 3 steps, evaluation at the last.
OVERRIDES = [
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
    "algo.mode=decoupled",
    "algo.train_rollout=true",
    "trainer.max_steps=3",
    "trainer.eval_every=3",
    "trainer.eval_samples=2",
    "trainer.checkpoint_every=3",
    "trainer.num_threads=1",
    "run.plot=false",
    "rollout.engine=vllm",
    "rollout.vllm.kv_cache_memory_gib=0.05",
    "rollout.vllm.max_model_len=64",
    "rollout.vllm.enforce_eager=true",
]


def test_decoupled_fit_with_vllm_and_a_training_rollout_model(tmp_path: Path) -> None:
    """Three steps run; every step syncs weights; one engine per model, evaluation included."""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jackpot.fit",
            "--config",
            str(ROOT / "configs" / "default.yaml"),
            f"run.dir={run_dir}",
            f"warmstart.cache_dir={tmp_path / 'warmstart'}",
            *OVERRIDES,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rows = read_metrics(run_dir / "metrics.csv")
    assert [r["step"] for r in rows] == [0.0, 1.0, 2.0]
    for row in rows:
        assert 0.0 < row["perf/weight_sync_s"] < 60.0
        assert math.isfinite(row["loss/policy"]) and math.isfinite(row["obrs/accept_rate"])
    assert "eval/accuracy" in rows[-1]
    engines = sorted(p.name for p in (run_dir / "engines").iterdir())
    assert engines == ["policy-rank0", "rollout_model-rank0"]
