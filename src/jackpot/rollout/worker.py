"""The asynchronous rollout worker: a process that samples the rollouts of RL step ``s`` from
the weights after update ``max(s - k, 0)`` (``k = rollout.max_staleness``) while the trainer
works on earlier steps.

Weight version ``v`` is the model after ``v`` RL steps of updates. The worker keeps a private
copy of the model that rolls out and refreshes it from a shared-memory copy the trainer
writes. Two queues carry the handshake, so the schedule is the same at any speed:

- control (trainer -> worker): ``v`` after the trainer wrote version ``v`` into the shared
  model (versions come in order, each one once); ``None`` = stop.
- results (worker -> trainer): :class:`Taken` once the worker copied a version out of the
  shared model (only then may the trainer overwrite it), :class:`Rollouts` with each step's
  batch, :class:`Failed` when the worker fails.

The worker sends the batches of steps ``first_step .. end_step - 1`` in order, then waits to be
stopped. It dies with the trainer: Linux's parent-death signal, and a poll of its parent and the
trainer.
"""

from __future__ import annotations

import copy
import ctypes
import io
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from jackpot.config import RolloutConfig
from jackpot.errors import describe
from jackpot.rollout.batch import RolloutBatch
from jackpot.rollout.engine import SamplingParams
from jackpot.rollout.factory import build_engine
from jackpot.rollout.generation import step_rollout
from jackpot.tasks.synthetic import Example

__all__ = [
    "Failed",
    "Rollouts",
    "Taken",
    "WorkerSpec",
    "batch_from_state",
    "batch_state",
    "copy_weights",
    "pack",
    "run_worker",
    "unpack",
    "weight_version",
]

_PR_SET_PDEATHSIG = 1
"""``prctl`` option: the signal this process gets when its parent dies (Linux)."""

PARENT_POLL_S = 1.0
"""Seconds between two checks that the trainer is still the worker's parent."""


def weight_version(step: int, max_staleness: int) -> int:
    """The weight version that samples the rollouts of RL step ``step``: ``max(step - k, 0)``."""
    return max(step - max_staleness, 0)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything the worker needs besides the model, the tokenizer and the prompts."""

    rollout: RolloutConfig
    """The run's ``rollout`` section (engine, batch limit, group size, prompts per step)."""
    params: SamplingParams
    """The sampling parameters the trainer samples with (they define ``p_inf``)."""
    seed: int
    """``run.seed``: the prompts and the generator of each step derive from it."""
    max_staleness: int
    """``k``: step ``s`` is sampled from version ``max(s - k, 0)``."""
    first_step: int
    """First step whose rollouts the worker samples."""
    end_step: int
    """One past the last such step."""
    start_version: int
    """Version held by the shared model when the worker starts."""
    sends_weights: bool
    """The trainer writes each new version into the shared model (the rolling-out model
    trains); else only the version numbers come, pacing the worker."""
    pad_token_id: int
    """Pad id of the engine."""
    work_dir: str
    """Where an engine that needs a saved copy of the model writes it (vLLM)."""
    device: str
    """``cpu``, or ``cuda`` for the first of ``cuda_devices``."""
    cuda_devices: tuple[int, ...] | None
    """GPUs the worker sees (``CUDA_VISIBLE_DEVICES``); None on a CPU."""
    num_threads: int | None
    """torch CPU threads of the worker; None = torch's default."""
    parent_pid: int
    """The trainer's process id: the worker exits when it is gone."""


@dataclass(frozen=True)
class Taken:
    """The worker copied ``version`` out of the shared model."""

    version: int


@dataclass(frozen=True)
class Rollouts:
    """The rollouts of ``step``, serialised by :func:`pack` (their metadata hold the version)."""

    step: int
    payload: bytes


@dataclass(frozen=True)
class Failed:
    """The worker stopped on an error while working on ``step``."""

    step: int
    message: str


def batch_state(batch: RolloutBatch) -> dict[str, Any]:
    """``batch`` as plain data: CPU tensors, strings, numbers (a checkpoint loads it with
    ``weights_only=True``)."""
    state = {f.name: getattr(batch, f.name) for f in fields(batch)}
    state["params"] = batch.params.to_dict()
    return {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in state.items()}


def batch_from_state(state: dict[str, Any]) -> RolloutBatch:
    """Inverse of :func:`batch_state`."""
    return RolloutBatch(**{**state, "params": SamplingParams.from_dict(state["params"])})


def pack(batch: RolloutBatch) -> bytes:
    """``batch`` as bytes for the results queue (no shared-memory handles to outlive)."""
    buffer = io.BytesIO()
    torch.save(batch_state(batch), buffer)
    return buffer.getvalue()


def unpack(payload: bytes) -> RolloutBatch:
    """Inverse of :func:`pack`; loads plain data only."""
    return batch_from_state(torch.load(io.BytesIO(payload), weights_only=True))


@torch.no_grad()
def copy_weights(dst: nn.Module, src: nn.Module) -> None:
    """Copy every parameter and buffer of ``src`` into ``dst`` in place (same architecture;
    across devices)."""
    source = src.state_dict()
    for name, tensor in dst.state_dict().items():
        tensor.copy_(source[name])


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def watch_parent(trainer_pid: int) -> None:
    """Exit when the trainer dies, even by ``kill -9``: the parent-death signal on Linux (the
    parent is the trainer, or the fork server that exits with it), and a thread that polls
    the parent and the trainer (other systems, and a parent that died first)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the poll below still works
            pass
    parent = os.getppid()

    def poll() -> None:
        while os.getppid() == parent and _alive(trainer_pid):
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    if not _alive(trainer_pid):
        os._exit(1)
    threading.Thread(target=poll, name="jackpot-parent-watch", daemon=True).start()


def run_worker(
    spec: WorkerSpec,
    shared: nn.Module,
    tokenizer: Any,
    examples: list[Example],
    control: Any,
    results: Any,
) -> None:
    """The worker process: sample each step's rollouts from its scheduled weight version."""
    watch_parent(spec.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the trainer, which stops us
    step = spec.first_step
    try:
        if spec.cuda_devices is not None:  # before anything initialises CUDA here
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in spec.cuda_devices)
        if spec.num_threads:
            torch.set_num_threads(spec.num_threads)
        model = copy.deepcopy(shared).to(spec.device)
        version = spec.start_version
        results.put(Taken(version))
        engine = build_engine(spec.rollout, model, spec.pad_token_id, spec.work_dir)
        for step in range(spec.first_step, spec.end_step):
            start = time.perf_counter()
            while version < weight_version(step, spec.max_staleness):
                published = control.get()
                if published is None:
                    return
                version = published
                if spec.sends_weights:
                    copy_weights(model, shared)
                    engine.sync_weights(model)
                results.put(Taken(version))
            waited = time.perf_counter() - start
            start = time.perf_counter()
            batch = step_rollout(
                engine,
                tokenizer,
                examples,
                step,
                seed=spec.seed,
                prompts_per_step=spec.rollout.prompts_per_step,
                group=spec.rollout.group_size,
                params=spec.params,
                batch_limit=spec.rollout.generation_batch_size,
                device=spec.device,
            )
            made = {
                "weight_version": version,
                "generate_s": time.perf_counter() - start,
                "worker_wait_s": waited,
            }
            results.put(Rollouts(step, pack(replace(batch, metadata={**batch.metadata, **made}))))
        while control.get() is not None:  # everything is sent: wait to be stopped
            pass
    except BaseException as exc:
        traceback.print_exc()
        results.put(Failed(step, describe(exc)))
        raise SystemExit(1) from None
