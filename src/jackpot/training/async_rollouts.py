"""The trainer's side of asynchronous rollouts (``rollout.max_staleness = k >= 1``).

:class:`AsyncRollouts` starts the worker of :mod:`jackpot.rollout.worker` in a process of its
own with a shared-memory copy of the model that rolls out, hands it each new weight version
and takes its batches: step ``s`` trains on rollouts sampled from the weights after update
``max(s - k, 0)``, whatever the speeds. The shared copy is written only once the worker has
copied the previous version out of it, so every version reaches the worker intact.

Checkpoints: after ``d`` steps the batches of steps ``d .. d + k - 1`` were sampled from weights
the trainer no longer has, so they are saved with the checkpoint; a resumed run continues
exactly, the worker sampling from step ``d + k`` on from the restored weights (version ``d``).
"""

from __future__ import annotations

import copy
import os
import queue
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp
from torch import nn

from jackpot.config import JackpotConfig
from jackpot.rollout.batch import RolloutBatch
from jackpot.rollout.engine import SamplingParams
from jackpot.rollout.worker import (
    Failed,
    Rollouts,
    Taken,
    WorkerSpec,
    batch_from_state,
    batch_state,
    copy_weights,
    run_worker,
    unpack,
)
from jackpot.tasks.synthetic import Example
from jackpot.training.checkpoints import CheckpointError

__all__ = ["AsyncRollouts", "RolloutWorkerError", "restored_rollouts", "shared_copy", "uses_worker"]

POLL_S = 0.2
"""Seconds between two checks that the worker is alive while the trainer waits on it."""

STOP_S = 2.0
"""Seconds a stopping worker gets to exit before it is terminated."""


class RolloutWorkerError(RuntimeError):
    """The rollout worker died, hung or failed; the run stops, its checkpoints stay."""


def uses_worker(cfg: JackpotConfig) -> bool:
    """Whether the run's rollouts come from a worker process (``rollout.max_staleness`` >= 1)."""
    return cfg.rollout.max_staleness > 0


def shared_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are CPU tensors in shared memory (a GPU
    model is copied tensor by tensor, never whole on its device).

    Parameters keep ``model``'s ``requires_grad`` flags although nothing trains them: torch's
    matmul picks its kernel by them, so only then does the worker's copy sample bit for bit
    what the synchronous path would.
    """
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(p.detach().to("cpu", copy=True), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = b.detach().to("cpu", copy=True)
    return copy.deepcopy(model, memo).share_memory()


def restored_rollouts(state: dict[str, Any], cfg: JackpotConfig, where: str) -> list[Any]:
    """The pending batches a checkpoint's ``jackpot`` entry holds, refusing a checkpoint of a
    run with another ``rollout.max_staleness`` (its batches follow another schedule)."""
    saved = int(state.get("config", {}).get("rollout", {}).get("max_staleness", 0))
    if saved != cfg.rollout.max_staleness:
        raise CheckpointError(
            f"{where} was written with rollout.max_staleness={saved}, this run has "
            f"rollout.max_staleness={cfg.rollout.max_staleness}; resume with {saved} (run.dir's "
            "config.yaml), or start another run.dir"
        )
    return list(state.get("async_rollouts", []))


def _cause(exitcode: int | None) -> str:
    """How a process ended, in words."""
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


def worker_context(on_gpu: bool) -> Any:
    """Where the worker process starts. On a CPU: a fork server with the worker module
    imported (a fresh interpreter, as ``spawn``: no threads or memory of the trainer are
    inherited; started once per trainer process, so later workers start at once). With a GPU,
    or where there is no fork server: ``spawn`` (nothing CUDA-related is ever forked)."""
    if on_gpu or "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload([run_worker.__module__])
    return context


class AsyncRollouts:
    """The rollout worker of a run, seen from the trainer: hand it weights, take its batches."""

    def __init__(
        self,
        cfg: JackpotConfig,
        model: nn.Module,
        tokenizer: Any,
        examples: list[Example],
        params: SamplingParams,
        first_step: int,
        restored: list[Any],
        sends_weights: bool,
        work_dir: Path,
    ) -> None:
        """Start the worker at ``first_step`` (the trainer's weights are version
        ``first_step``) and wait until it holds them, so that its start-up, like the
        trainer's, is not counted in a step; ``restored``: a checkpoint's pending batches
        (steps from ``first_step`` on)."""
        r = cfg.rollout
        self.max_staleness = r.max_staleness
        self.timeout = r.worker_timeout_s
        self.sends_weights = sends_weights
        self.ready: dict[int, RolloutBatch] = {
            int(item["step"]): batch_from_state(item["batch"]) for item in restored
        }
        self.published = first_step
        """Newest version handed to the worker (the shared model holds it if weights move)."""
        self.taken = -1
        """Newest version the worker copied out of the shared model."""
        self.shared = shared_copy(model)
        spec = WorkerSpec(
            rollout=r,
            params=params,
            seed=cfg.run.seed,
            max_staleness=r.max_staleness,
            first_step=first_step + len(self.ready),
            end_step=cfg.trainer.max_steps + r.max_staleness,
            start_version=first_step,
            sends_weights=sends_weights,
            pad_token_id=int(tokenizer.pad_token_id),
            work_dir=str(work_dir),
            device="cpu" if r.devices is None else "cuda",
            cuda_devices=None if r.devices is None else tuple(r.devices),
            num_threads=r.num_threads or cfg.trainer.num_threads,
            parent_pid=os.getpid(),
        )
        context = worker_context(on_gpu=r.devices is not None)
        self.control: Any = context.Queue()
        self.results: Any = context.Queue()
        self.process = context.Process(
            target=run_worker,
            args=(spec, self.shared, tokenizer, examples, self.control, self.results),
            name="jackpot-rollout-worker",
            daemon=True,
        )
        self.closed = False
        self.process.start()
        self._wait(lambda: self.taken >= first_step, "it to start")

    @property
    def pid(self) -> int | None:
        """The worker's process id."""
        return self.process.pid

    def rollout(self, step: int, model: nn.Module) -> tuple[RolloutBatch, dict[str, float]]:
        """Hand the worker version ``step`` (``model``'s weights now), then take the rollouts of
        ``step``; with the step's metrics (staleness, time the trainer waited)."""
        waited = synced = 0.0
        if step > self.published:
            if self.sends_weights:  # overwrite the shared copy only once the worker has ours
                taken = f"it to copy weight version {step - 1}"
                waited += self._wait(lambda: self.taken >= step - 1, taken)
                start = time.perf_counter()
                copy_weights(self.shared, model)
                synced = time.perf_counter() - start
            self.control.put(step)
            self.published = step
        waited += self._wait(lambda: step in self.ready, f"the rollouts of step {step}")
        batch = self.ready.pop(step)
        meta = batch.metadata
        staleness = float(step - meta["weight_version"])
        return batch, {
            "async/staleness": staleness,
            "async/staleness_max": staleness,  # one version samples the whole step
            "async/worker_wait_s": float(meta["worker_wait_s"]),
            "perf/rollout_wait_s": waited,
            "perf/weight_sync_s": synced,
        }

    def pending_state(self, first_step: int) -> list[dict[str, Any]]:
        """The batches of steps ``first_step .. first_step + k - 1`` as plain data, for a
        checkpoint after ``first_step`` steps (waits until the worker has sent them)."""
        steps = range(first_step, first_step + self.max_staleness)
        self._wait(lambda: all(s in self.ready for s in steps), "the rollouts to checkpoint")
        return [{"step": s, "batch": batch_state(self.ready[s])} for s in steps]

    def close(self) -> None:
        """Stop the worker (asked first, then terminated, then killed) and release the
        queues; idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.process.is_alive():
            self.control.put(None)
            self.process.join(STOP_S)
        for stop in (self.process.terminate, self.process.kill):
            if self.process.is_alive():
                stop()
                self.process.join(STOP_S)
        for q in (self.control, self.results):
            q.cancel_join_thread()
            q.close()

    def _wait(self, done: Callable[[], bool], what: str) -> float:
        """Take the worker's messages until ``done()``; the seconds it took. A worker that
        dies, fails or sends nothing for ``rollout.worker_timeout_s`` stops the run."""
        start = quiet = time.perf_counter()
        while not done():
            try:
                self._receive(self.results.get(timeout=POLL_S))
                quiet = time.perf_counter()
            except queue.Empty:
                if not self.process.is_alive():
                    self._fail(
                        f"the rollout worker (pid {self.pid}) died "
                        f"({_cause(self.process.exitcode)}) while the trainer waited for {what}"
                    )
                if time.perf_counter() - quiet >= self.timeout:
                    self.process.kill()
                    self._fail(
                        f"the rollout worker (pid {self.pid}) sent nothing in "
                        f"rollout.worker_timeout_s={self.timeout:g} s while the trainer waited "
                        f"for {what} (it is alive but stuck; killed it)"
                    )
        return time.perf_counter() - start

    def _receive(self, message: Any) -> None:
        """Record one message of the worker."""
        if isinstance(message, Taken):
            self.taken = message.version
        elif isinstance(message, Rollouts):
            self.ready[message.step] = unpack(message.payload)
        elif isinstance(message, Failed):
            self._fail(
                f"the rollout worker failed on the rollouts of step {message.step}: "
                f"{message.message} (its traceback is above)"
            )

    def _fail(self, message: str) -> None:
        """Stop the worker and the run."""
        self.close()
        raise RolloutWorkerError(message)
