"""Asynchronous rollouts (``rollout.max_staleness``): the schedule, determinism, the synchronous
path, resume, a dead or stuck worker, clean shutdown, and the refused configurations; in both
modes (decoupled: the rollout model's worker; on-policy: the policy's)."""

from __future__ import annotations

import math
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import jackpot.module
from jackpot.config import ConfigError, JackpotConfig, load_config
from jackpot.fit import main, run
from jackpot.module import JackpotModule
from jackpot.rollout.batch import RolloutBatch
from jackpot.rollout.engine import SamplingParams
from jackpot.rollout.worker import batch_from_state, batch_state, pack, unpack, weight_version
from jackpot.training import async_rollouts
from jackpot.training.async_rollouts import restored_rollouts, shared_copy
from jackpot.training.checkpoints import CheckpointError, latest_valid_checkpoint
from jackpot.training.csv_logger import read_metrics

from .conftest import DEFAULT_CONFIG, ROOT, tiny_overrides

ON_POLICY = ["algo.mode=on_policy", "sampler.name=tis"]
"""The policy rolls out (its worker), TIS corrects the lag."""

DECOUPLED = ["algo.mode=decoupled", "sampler.topk=8"]
"""The training rollout model rolls out (its worker); top-k OBRS works from the recorded p_inf."""

SHARED = ["rollout.num_threads=1", "warmstart.policy_steps=150"]
"""One worker thread; a policy warm enough to earn rewards, so its updates move it."""


def _config(run_dir: Path, cache: Path, mode: list[str], k: int, steps: int = 4) -> JackpotConfig:
    overrides = [*tiny_overrides(run_dir, cache, steps), *mode, *SHARED]
    return load_config(DEFAULT_CONFIG, [*overrides, f"rollout.max_staleness={k}"])


def _learning(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    """Every metric but the timings."""
    return [
        {k: v for k, v in r.items() if not k.startswith("perf/") and k != "async/worker_wait_s"}
        for r in rows
    ]


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _at_step(
    monkeypatch: pytest.MonkeyPatch, step: int, action: Callable[[JackpotModule], None]
) -> None:
    """Run ``action(module)`` when the trainer scores the rewards of RL step ``step``."""
    rewards = JackpotModule._rewards

    def hooked(self: JackpotModule, rollout: RolloutBatch) -> torch.Tensor:
        if self.current_epoch == step:
            action(self)
        return rewards(self, rollout)

    monkeypatch.setattr(JackpotModule, "_rewards", hooked)


# ----------------------------------------------------------------------------- pure parts


def test_step_s_is_sampled_from_version_s_minus_k() -> None:
    assert [weight_version(s, 2) for s in range(6)] == [0, 0, 0, 1, 2, 3]
    assert [weight_version(s, 0) for s in range(3)] == [0, 1, 2]


def test_a_batch_survives_the_queue_and_a_checkpoint(tmp_path: Path) -> None:
    n, t, k = 4, 3, 2
    batch = RolloutBatch(
        prompt_ids=torch.ones(n, 2, dtype=torch.int64),
        prompt_mask=torch.ones(n, 2, dtype=torch.int64),
        response_ids=torch.zeros(n, t, dtype=torch.int64),
        response_mask=torch.ones(n, t, dtype=torch.int64),
        logp_inf=torch.full((n, t), -0.5),
        topk_ids=torch.zeros(n, t, k, dtype=torch.int64),
        topk_logp=torch.full((n, t, k), -0.5),
        finished=torch.ones(n, dtype=torch.bool),
        group_ids=torch.arange(n),
        params=SamplingParams(stop_token_ids=(2,)),
        pad_token_id=0,
        prompts=["1+1="] * n,
        answers=["2"] * n,
        metadata={"weight_version": 3, "generate_s": 0.5},
    )
    back = unpack(pack(batch))
    torch.save({"pending": [batch_state(batch)]}, tmp_path / "c.ckpt")
    loaded = torch.load(tmp_path / "c.ckpt", weights_only=True)["pending"][0]
    for other in (back, unpack(pack(batch_from_state(loaded)))):
        assert other.params == batch.params and other.metadata == batch.metadata
        assert other.prompts == batch.prompts and torch.equal(other.topk_logp, batch.topk_logp)


def test_the_shared_copy_is_a_copy_in_shared_memory_with_the_same_grad_flags() -> None:
    """The flags matter: torch's matmul folds a 3-D input by them (a prefill's last position
    through the head differed by 6e-8 when the copy's parameters did not require grad)."""
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2), torch.nn.Linear(2, 2)
    )
    model[2].requires_grad_(False)
    copy = shared_copy(model)
    for mine, theirs in zip(model.state_dict().values(), copy.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs) and theirs.is_shared()
        assert mine.data_ptr() != theirs.data_ptr()
    flags = [p.requires_grad for p in copy.parameters()]
    assert flags == [p.requires_grad for p in model.parameters()] == [True] * 4 + [False] * 2


def test_a_checkpoint_of_another_staleness_is_refused(tmp_path: Path) -> None:
    cfg = load_config(DEFAULT_CONFIG, ["rollout.max_staleness=1", "sampler.topk=8"])
    state = {"config": {"rollout": {"max_staleness": 2}}, "async_rollouts": []}
    with pytest.raises(CheckpointError, match="rollout.max_staleness=2.*max_staleness=1"):
        restored_rollouts(state, cfg, "checkpoint 'x'")
    state["config"]["rollout"]["max_staleness"] = 1
    assert restored_rollouts(state, cfg, "checkpoint 'x'") == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["rollout.max_staleness=-1"], r"rollout.max_staleness=-1 is out of range"),
        (["rollout.worker_timeout_s=0"], r"rollout.worker_timeout_s=0.0 is out of range"),
        (["trainer.num_nodes=2"], r"rollout.max_staleness=1 is not allowed with 2 training"),
        (["trainer.strategy=fsdp"], r"trainer.strategy='fsdp' is not allowed with rollout.max"),
        (
            ["rollout.files=rollouts", "algo.train_rollout=false"],
            r"rollout.files='rollouts' is not allowed with rollout.max_staleness=1",
        ),
        (["rollout.devices=[0]"], r"rollout.devices=\[0\] needs trainer.accelerator='gpu'"),
        (
            ["rollout.devices=[1,2]", "trainer.accelerator=gpu"],
            r"rollout.devices=\[1, 2\] is not allowed; give one CUDA index",
        ),
        (["trainer.accelerator=gpu"], r"trainer.accelerator='gpu' needs rollout.devices"),
        (
            ["rollout.engine=vllm", "rollout.vllm.tensor_parallel_size=2"],
            r"rollout.vllm.tensor_parallel_size=2 is not allowed with rollout.max_staleness=1",
        ),
        (["sampler.topk=null"], r"sampler.name='obrs' needs the full p_inf.*sampler.topk=k"),
    ],
)
def test_refused_asynchronous_configs_name_the_key(overrides: list[str], message: str) -> None:
    given = ["rollout.max_staleness=1", "sampler.topk=8", *overrides]
    with pytest.raises(ConfigError, match=message):
        load_config(DEFAULT_CONFIG, given, check_devices=False, check_paths=False)


def test_a_frozen_rollout_model_keeps_the_exact_normaliser() -> None:
    """Its weights never change, so the trainer rescores p_inf with the weights that sampled."""
    cfg = load_config(DEFAULT_CONFIG, ["rollout.max_staleness=2", "algo.train_rollout=false"])
    assert cfg.sampler.topk is None


# ----------------------------------------------------------------------------- runs


@pytest.mark.parametrize(
    ("mode", "moves"),
    [(ON_POLICY, "ppo/approx_kl"), (DECOUPLED, "distill/loss")],
    ids=["on_policy", "decoupled"],
)
def test_k0_builds_no_worker_and_a_worker_at_k0_reproduces_it(
    tmp_path: Path,
    warmstart_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: list[str],
    moves: str,
) -> None:
    """The worker's prompts, generator and weights are the synchronous path's: at k = 0 it
    gives the same run, bit for bit (and k = 0 itself starts no worker)."""
    built: list[Any] = []
    monkeypatch.setattr(jackpot.module, "AsyncRollouts", lambda *a, **kw: built.append(a))
    sync = read_metrics(run(_config(tmp_path / "sync", warmstart_cache, mode, 0)).metrics_csv)
    assert built == []
    monkeypatch.undo()
    monkeypatch.setattr(jackpot.module, "uses_worker", lambda cfg: True)
    forced = _config(tmp_path / "worker", warmstart_cache, mode, 0)
    rows = read_metrics(run(forced).metrics_csv)
    assert [r["async/staleness"] for r in rows] == [0.0] * 4
    assert max(r[moves] for r in sync) > 1e-4  # the sampling model moved: it needed updates
    for want, got in zip(_learning(sync), _learning(rows), strict=True):
        assert {k: got[k] for k in want} == want


def test_two_async_runs_agree_and_follow_the_schedule(
    tmp_path: Path, warmstart_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On-policy, k = 2: step s trains on rollouts of the policy after update max(s - 2, 0),
    so p_inf (the stale policy) differs from the trained one once it has moved. The second
    run's worker is spawned (as on a GPU) instead of forked from the fork server."""
    first = read_metrics(run(_config(tmp_path / "a", warmstart_cache, ON_POLICY, 2)).metrics_csv)
    spawn = multiprocessing.get_context("spawn")
    monkeypatch.setattr(async_rollouts, "worker_context", lambda on_gpu: spawn)
    second = read_metrics(run(_config(tmp_path / "b", warmstart_cache, ON_POLICY, 2)).metrics_csv)
    assert [r["async/staleness"] for r in first] == [0.0, 1.0, 2.0, 2.0]
    assert [r["async/staleness_max"] for r in first] == [0.0, 1.0, 2.0, 2.0]
    assert first[0]["mismatch/kl_k3"] < 1e-6 < max(r["mismatch/kl_k3"] for r in first[1:])
    assert _learning(first) == _learning(second)
    assert {"perf/rollout_wait_s", "async/worker_wait_s", "perf/rollout_tokens_per_s"} <= set(
        first[-1]
    )
    assert all(math.isfinite(v) for r in first for v in r.values())


def test_a_resumed_async_run_matches_the_uninterrupted_one(
    tmp_path: Path, warmstart_cache: Path
) -> None:
    """Decoupled, k = 2: the checkpoint after 2 steps holds the rollouts of steps 2 and 3,
    sampled from versions 0 and 1, which the resumed run no longer has."""
    full = read_metrics(run(_config(tmp_path / "full", warmstart_cache, DECOUPLED, 2)).metrics_csv)
    part = _config(tmp_path / "part", warmstart_cache, DECOUPLED, 2, steps=2)
    run(part)
    other = _config(tmp_path / "part", warmstart_cache, DECOUPLED, 1)
    other.run.resume = True
    with pytest.raises(CheckpointError, match="written with rollout.max_staleness=2"):
        run(other)
    resumed_cfg = _config(tmp_path / "part", warmstart_cache, DECOUPLED, 2)
    resumed_cfg.run.resume = True
    resumed = read_metrics(run(resumed_cfg).metrics_csv)
    assert [r["step"] for r in resumed] == [0.0, 1.0, 2.0, 3.0]
    assert max(r["distill/loss"] for r in full) > 0  # the rollout model trained: weights moved
    assert _learning(resumed) == _learning(full)


@pytest.mark.parametrize(
    ("signum", "message"),
    [
        (signal.SIGKILL, r"the rollout worker \(pid \d+\) died \(killed by SIGKILL\)"),
        (signal.SIGSTOP, r"sent nothing in rollout.worker_timeout_s=1 s.*stuck"),
    ],
    ids=["dead", "stuck"],
)
def test_a_dead_or_stuck_worker_stops_the_run_keeping_its_checkpoint(
    tmp_path: Path,
    warmstart_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signum: int,
    message: str,
) -> None:
    """The command line says why in one line, and where the run can go on from."""
    pids: list[int] = []

    def strike(module: JackpotModule) -> None:
        worker = module.rollout_worker
        assert worker is not None and worker.pid is not None
        worker.timeout = 1.0  # as rollout.worker_timeout_s=1 would, once the worker is up
        pids.append(worker.pid)
        os.kill(worker.pid, signum)

    _at_step(monkeypatch, 1, strike)
    run_dir = tmp_path / "run"
    args = [*_args(warmstart_cache, DECOUPLED, 1), f"run.dir={run_dir}", "trainer.max_steps=6"]
    code = main(["--config", str(DEFAULT_CONFIG), *args])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and err.startswith("python -m jackpot.fit: stopped: "), err
    assert re.search(message, err) and err.endswith("rerun with --resume"), err
    assert latest_valid_checkpoint(run_dir / "checkpoints") is not None
    assert not _running(pids[0])  # a stuck worker is killed, not left behind


def _args(cache: Path, mode: list[str], k: int) -> list[str]:
    """Command-line overrides of an asynchronous tiny run (its run.dir given apart)."""
    tiny = [o for o in tiny_overrides(Path("unused"), cache) if not o.startswith("run.dir=")]
    return [*tiny, *mode, *SHARED, f"rollout.max_staleness={k}"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_or_ctrl_c_in_the_trainer_stops_the_worker(
    tmp_path: Path,
    warmstart_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: type[BaseException],
) -> None:
    pids: list[int] = []

    def fail(module: JackpotModule) -> None:
        assert module.rollout_worker is not None and module.rollout_worker.pid is not None
        pids.append(module.rollout_worker.pid)
        raise error("stop here")

    _at_step(monkeypatch, 1, fail)
    cfg = _config(tmp_path / "run", warmstart_cache, ON_POLICY, 1)
    handler = signal.getsignal(signal.SIGINT)
    try:  # Lightning turns Ctrl-C into SystemExit(1), ignoring further Ctrl-C
        with pytest.raises(SystemExit if error is KeyboardInterrupt else error):
            run(cfg)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert not _running(pids[0])
    assert multiprocessing.active_children() == []


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from ``/proc``)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_the_trainer_leaves_no_worker(tmp_path: Path, warmstart_cache: Path) -> None:
    run_dir = tmp_path / "killed"
    _config(run_dir, warmstart_cache, DECOUPLED, 1)  # warm starts cached: the kill hits training
    args = ["--config", str(DEFAULT_CONFIG), *_args(warmstart_cache, DECOUPLED, 1)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "jackpot.fit", *args, f"run.dir={run_dir}", "trainer.max_steps=400"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not any((run_dir / "checkpoints").glob("step-*.ckpt")):
        time.sleep(0.2)
    children = _descendants(proc.pid)
    assert children  # the worker (and the fork server it came from)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_running(p) for p in children):
        time.sleep(0.1)
    assert not [p for p in children if _running(p)]
