"""Offline decoupled training: which rollout file feeds RL step ``s``, and whether it fits.

With ``rollout.files`` set, the trainer generates nothing: RL step ``s`` trains on file
``s mod n`` of the ``n`` files, in sorted path order (so a run longer than the files cycles
through them again, and a resumed run picks up the same file for the same step). Each file
was written by :func:`~jackpot.rollout.io.save_rollouts` or by another engine in that format;
its ``p_inf`` is whatever produced it, so the only things the trainer can check are the ones
the file records: the temperature ``p_inf`` was sampled at (p_ref / p_new are scored at it),
how many top log-probs of ``p_inf`` it kept (the top-k Z of OBRS needs ``sampler.topk`` of
them), the vocabulary size, that rewards can be had (a ``rewards`` tensor, or the prompt
and answer texts for the reward function), and the task and split it was generated from
(its ``source``). Torch only; no transformers.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from jackpot.config import ConfigError
from jackpot.rollout.batch import RolloutBatch, RolloutFormatError
from jackpot.rollout.io import RolloutFileInfo, load_rollouts, read_rollout_info

__all__ = [
    "check_rollout_file",
    "check_rollout_task",
    "file_for_step",
    "load_step_rollouts",
    "read_infos",
    "resolve_rollout_files",
    "shard_groups",
    "task_source",
]

SUFFIX = ".safetensors"
"""Files of a ``rollout.files`` directory that are read (hidden and other files are not)."""


def resolve_rollout_files(spec: str) -> list[Path]:
    """The rollout files named by ``spec``, sorted by path.

    ``spec`` is a directory (its ``*.safetensors`` files, not recursive, hidden ones skipped),
    a glob pattern (``runs/gen/*.safetensors``, ``**`` allowed; matching files only), or one
    file. Raises ``FileNotFoundError`` when nothing matches.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        files = [
            p for p in path.iterdir() if p.suffix == SUFFIX and p.is_file() and p.name[0] != "."
        ]
        if not files:
            raise FileNotFoundError(f"directory {spec!r} holds no *{SUFFIX} file")
    elif path.is_file():
        files = [path]
    elif glob.has_magic(spec):
        files = [Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True)]
        files = [p for p in files if p.is_file()]
        if not files:
            raise FileNotFoundError(f"pattern {spec!r} matches no file")
    else:
        raise FileNotFoundError(f"{spec!r} is neither a directory, a file nor a glob pattern")
    return sorted(files, key=str)


def file_for_step(files: Sequence[Path], step: int) -> Path:
    """The file RL step ``step`` trains on: ``files[step % len(files)]`` (cycling)."""
    if not files:
        raise ValueError("no rollout files to choose from")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return files[step % len(files)]


def check_rollout_file(
    info: RolloutFileInfo,
    *,
    temperature: float,
    sampler_topk: int | None,
    vocab_size: int | None = None,
) -> None:
    """Raise :class:`~jackpot.config.ConfigError` unless the file can train this run.

    ``temperature``: ``rollout.temperature``, at which p_ref / p_new are scored; it must be the
    temperature ``p_inf`` was sampled at. ``sampler_topk``: top-k of p_target the sampler puts
    in its candidate set (None = the sampler needs no top-k); the file must record at least
    that many ``p_inf`` log-probs. ``vocab_size``: the policy's output size (None = unchecked).
    """
    where = f"rollout file {str(info.path)!r}"
    file_temperature = info.params.temperature
    if file_temperature == 0:
        raise ConfigError(
            f"{where} was decoded greedily (temperature 0): its p_inf is a point mass that no "
            "policy temperature reproduces; train on sampled rollouts (temperature > 0)"
        )
    if abs(file_temperature - temperature) > 1e-6 * max(1.0, abs(temperature)):
        raise ConfigError(
            f"rollout.temperature={temperature!r} but {where} was sampled at temperature "
            f"{file_temperature!r} (its p_inf); p_ref and p_new are scored at "
            f"rollout.temperature, so set rollout.temperature={file_temperature!r}"
        )
    if sampler_topk is not None and sampler_topk > info.logprobs_k:
        raise ConfigError(
            f"sampler.topk={sampler_topk} but {where} records only the top {info.logprobs_k} "
            f"log-probs of p_inf; allowed sampler.topk in [1, {info.logprobs_k}]"
        )
    if vocab_size is not None and info.vocab_size is not None and info.vocab_size != vocab_size:
        raise ConfigError(
            f"{where} has vocab_size={info.vocab_size} but the policy scores {vocab_size} "
            "tokens; the files must come from a model with the policy's vocabulary"
        )
    if not info.has_rewards and not info.has_texts:
        raise ConfigError(
            f"{where} has neither a rewards tensor nor prompt and answer texts, so "
            "task.reward cannot score it; write rewards or texts into the file"
        )


def task_source(task: Any, split: str = "train") -> str:
    """What a file generated from ``split`` of ``task`` (a ``TaskConfig``) records as ``source``.

    ``synthetic:<name>:<split>`` for a synthetic task, ``<jsonl|parquet>:<file name>:<split>``
    for a local data file.
    """
    if task.name in ("jsonl", "parquet"):
        return f"{task.name}:{Path(str(task.path)).name}:{split}"
    return f"synthetic:{task.name}:{split}"


def check_rollout_task(info: RolloutFileInfo, task: Any, *, allow_mismatch: bool) -> None:
    """Raise :class:`~jackpot.config.ConfigError` when the file's ``source`` is another task.

    A run trains on the train split of ``task`` (a ``TaskConfig``); files of another task or
    split are refused unless ``allow_mismatch`` (``rollout.allow_task_mismatch``). Files that
    record no ``source`` (other engines) are not checked.
    """
    recorded = info.metadata.get("source")
    expected = task_source(task)
    if recorded is None or recorded == expected or allow_mismatch:
        return
    raise ConfigError(
        f"rollout file {str(info.path)!r} was generated from source={recorded!r}, but this run "
        f"trains on {expected!r} (task.name={task.name!r}); write the files with the run's "
        "config (python -m jackpot.rollout generate --config <the same file and overrides>), "
        "or set rollout.allow_task_mismatch=true to train on them anyway"
    )


def shard_groups(batch: RolloutBatch, rank: int, world: int) -> RolloutBatch:
    """This rank's share of a file: whole GRPO groups, the ``rank``-th of every ``world``.

    Groups are never split (their advantages need every member); ``world == 1`` returns
    ``batch`` unchanged. A file with fewer groups than processes is an error.
    """
    if world == 1:
        return batch
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    groups = torch.unique(batch.group_ids.cpu())  # sorted
    if groups.numel() < world:
        raise ValueError(
            f"a rollout file with {groups.numel()} prompt groups cannot feed {world} processes"
        )
    mine = torch.isin(batch.group_ids.cpu(), groups[rank::world])
    return batch.select(torch.nonzero(mine).flatten())


def load_step_rollouts(
    files: Sequence[Path],
    step: int,
    *,
    temperature: float,
    sampler_topk: int | None,
    vocab_size: int | None,
    rank: int = 0,
    world: int = 1,
) -> RolloutBatch:
    """Load, fully validate and check the file of RL step ``step``; return this rank's share.

    A malformed file raises :class:`RolloutFormatError` naming the file; a file that does not
    fit the run, :class:`~jackpot.config.ConfigError` (see :func:`check_rollout_file`).
    """
    path = file_for_step(files, step)
    try:
        batch = load_rollouts(path)
    except RolloutFormatError as err:
        raise RolloutFormatError(f"{path}: {err.field_name}", err.expected, err.found) from None
    check_rollout_file(
        RolloutFileInfo.of_batch(batch, path),
        temperature=temperature,
        sampler_topk=sampler_topk,
        vocab_size=vocab_size,
    )
    if vocab_size is not None and batch.vocab_size is None:  # ids unchecked by the loader
        top = max(int(batch.prompt_ids.max()), int(batch.response_ids.max()))
        if top >= vocab_size:
            raise RolloutFormatError(f"{path}: response_ids", f"ids < {vocab_size}", f"id {top}")
    return shard_groups(batch, rank, world)


def read_infos(files: Sequence[Path]) -> list[RolloutFileInfo]:
    """Headers of every file (cheap); a malformed header raises :class:`RolloutFormatError`."""
    out = []
    for path in files:
        try:
            out.append(read_rollout_info(path))
        except RolloutFormatError as err:
            raise RolloutFormatError(f"{path}: {err.field_name}", err.expected, err.found) from None
    return out
