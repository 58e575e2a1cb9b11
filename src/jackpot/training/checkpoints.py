"""Crash-safe checkpoints: atomic writes, ``weights_only`` loads, newest-valid selection.

A checkpoint is written to a temporary file, fsynced, renamed over its final name and the
directory fsynced, so a crash leaves either the old file or the new one, never half of one.
Loading uses ``torch.load(weights_only=True)``: a checkpoint cannot execute code.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer

from jackpot.errors import describe

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "PeriodicCheckpoint",
    "checkpoint_path",
    "latest_valid_checkpoint",
    "resumable_steps",
]

_NAME = re.compile(r"^step-(\d{6,})\.ckpt$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or holds more than tensors and plain data."""


def checkpoint_path(directory: Path, steps_done: int) -> Path:
    """``directory/step-000010.ckpt`` for a checkpoint after ``steps_done`` RL steps."""
    return directory / f"step-{steps_done:06d}.ckpt"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint_file(path: str | Path, map_location: Any = None) -> dict[str, Any]:
    """``torch.load(weights_only=True)``; any failure becomes a :class:`CheckpointError`."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt, truncated or not a jackpot checkpoint "
            f"({describe(exc)})"
        ) from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"checkpoint {str(path)!r} has no model state_dict")
    return state


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O with atomic writes and safe loads."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        """Write to ``.name.tmp``, fsync, rename into place, fsync the directory."""
        final = Path(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp")
        with open(tmp, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load with ``weights_only=True`` whatever the caller asks."""
        return load_checkpoint_file(path, map_location)


def latest_valid_checkpoint(directory: Path) -> Path | None:
    """The newest ``step-*.ckpt`` in ``directory`` that loads; corrupt ones are named, skipped."""
    if not directory.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name)))
    for _, path in reversed(found):
        try:
            load_checkpoint_file(path, map_location="cpu")
        except CheckpointError as exc:
            warnings.warn(f"{exc}; falling back to the previous checkpoint", stacklevel=2)
            continue
        return path
    return None


def resumable_steps(path: Path, state_dict: Mapping[str, Any], optimizers: int) -> int:
    """RL steps done by the checkpoint at ``path``, once it is known to be a jackpot checkpoint
    of a run with this ``state_dict`` (the module's) and number of ``optimizers``; else
    :class:`CheckpointError` (Lightning would crash on other shapes, or drop an optimiser)."""
    state = load_checkpoint_file(path, "cpu")
    where = f"checkpoint {str(path)!r}"
    fix = "resume with the config it was written with (run.dir's config.yaml) or another run.dir"
    entry = state.get("jackpot")
    if not isinstance(entry, dict) or not isinstance(entry.get("rl_step"), int):
        raise CheckpointError(
            f"{where} was not written by jackpot (no RL step recorded); resume only from "
            "checkpoints a jackpot run wrote there, or choose another run.dir"
        )
    found = {k: tuple(v.shape) for k, v in state["state_dict"].items() if hasattr(v, "shape")}
    wanted = {k: tuple(v.shape) for k, v in state_dict.items()}
    differing = sorted(k for k in found.keys() | wanted.keys() if found.get(k) != wanted.get(k))
    if differing:
        name = differing[0]
        raise CheckpointError(
            f"{where} holds other models: {len(differing)} tensor(s) differ, e.g. {name} is "
            f"{found.get(name, 'absent')} there and {wanted.get(name, 'absent')} in this run; {fix}"
        )
    saved = len(state.get("optimizer_states", []))
    if saved != optimizers:
        raise CheckpointError(
            f"{where} trained {saved} model(s) but this run trains {optimizers} (algo.mode / "
            f"algo.train_rollout changed); {fix}"
        )
    return int(entry["rl_step"]) + 1


class PeriodicCheckpoint(Callback):
    """Save every ``every`` RL steps and at the end; keep the newest ``keep`` files."""

    def __init__(self, directory: Path, every: int, keep: int) -> None:
        self.directory = directory
        self.every = every
        self.keep = keep

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """One epoch is one RL step."""
        done = trainer.current_epoch + 1
        if done % self.every == 0 or done == trainer.max_epochs:
            self.save(trainer, done)

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        """On a non-finite stop, keep the current (last good) weights for inspection."""
        from jackpot.module import NonFiniteError

        if isinstance(exception, NonFiniteError):
            path = self.directory / "nonfinite-stop.ckpt"
            trainer.save_checkpoint(path)
            exception.args = (f"{exception.args[0]}; last good state saved to {path}",)

    def save(self, trainer: Trainer, steps_done: int) -> Path:
        """Write the checkpoint for ``steps_done`` and prune older ones (rank 0 writes)."""
        path = checkpoint_path(self.directory, steps_done)
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            existing = sorted(p for p in self.directory.glob("step-*.ckpt") if _NAME.match(p.name))
            for old in existing[: -self.keep]:
                old.unlink(missing_ok=True)
        return path
