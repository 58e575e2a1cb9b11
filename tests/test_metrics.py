"""The metric tracker: means per key, NaNs ignored, reset per step, one sync across processes."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from jackpot.metrics import MetricTracker


def test_means_per_key_mix_floats_and_tensors_and_ignore_nans() -> None:
    tracker = MetricTracker()
    tracker.update({"reward/mean": 1.0, "obrs/accept_rate": torch.tensor(0.5)})
    tracker.update({"reward/mean": torch.tensor(3.0), "obrs/accept_rate": math.nan})
    tracker.update({"reward/mean": torch.tensor(math.nan), "grad_norm/policy": 2})
    assert tracker.compute() == {
        "grad_norm/policy": 2.0,
        "obrs/accept_rate": 0.5,
        "reward/mean": 2.0,
    }


def test_compute_resets_and_reports_only_the_keys_updated_since() -> None:
    tracker = MetricTracker()
    tracker.update({"a": 1.0, "b": torch.tensor(2.0)})
    assert tracker.compute() == {"a": 1.0, "b": 2.0}
    assert tracker.compute() == {}
    tracker.update({"b": torch.tensor([4.0], dtype=torch.float16)})  # any float dtype, 1 element
    assert tracker.compute() == {"b": 4.0}


def test_weights_count_an_observation_as_that_many() -> None:
    tracker = MetricTracker()
    tracker.update({"float": 1.0, "tensor": torch.tensor(1.0)}, weight=3)
    tracker.update({"float": 0.0, "tensor": torch.tensor(0.0)})
    tracker.update({"float": math.nan, "tensor": torch.tensor(math.nan)}, weight=5)
    assert tracker.compute() == {"float": 0.75, "tensor": 0.75}


def test_a_key_seen_only_as_nan_reports_nan() -> None:
    tracker = MetricTracker()
    tracker.update({"x": math.nan, "y": torch.tensor(math.nan)})
    out = tracker.compute()
    assert math.isnan(out["x"]) and math.isnan(out["y"])


def test_tracker_checkpoint_state_stays_empty() -> None:
    assert MetricTracker().state_dict() == {}


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        tracker = MetricTracker()
        tracker.update({"a": float(rank), "b": torch.tensor(10.0 * (rank + 1))})
        tracker.update({"a": math.nan if rank == 0 else 5.0, "b": torch.tensor(0.0)})
        # an evaluation over uneven shares: rank 0 scored 3 prompts (mean 1), rank 1 one (0)
        tracker.update({"eval": torch.tensor(1.0 - rank)}, weight=3 - 2 * rank)
        torch.save(tracker.compute(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_compute_averages_across_processes(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    # a: rank 0 saw {0, NaN}, rank 1 saw {1, 5} -> (0 + 1 + 5) / 3; b: (10 + 0 + 20 + 0) / 4;
    # eval: (3 x 1 + 1 x 0) / 4 prompts, not the mean of the two ranks' means
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt") == {"a": 2.0, "b": 7.5, "eval": 0.75}
