"""Train a run: ``python -m jackpot.fit --config configs/<name>.yaml [key=value ...]``.

Loads and validates the config and inputs (exit code 2 with a one-line message, writing
nothing, on a bad one), builds the models, task, reward and sampler, runs the Lightning
Trainer, and writes ``metrics.csv``, ``plot.png``, ``config.yaml`` and checkpoints under
``run.dir``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from jackpot.tasks.datasets import PromptCheck

__all__ = ["build_module", "main", "run"]


@dataclass
class RunResult:
    """What a finished run left behind."""

    run_dir: Path
    metrics_csv: Path
    plot: Path | None
    last_checkpoint: Path | None
    metrics: dict[str, float]


def _task_examples(cfg: Any, check: PromptCheck | None = None) -> tuple[list[Any], list[Any]]:
    """Train and eval examples: a synthetic task, or a local file whose last rows are eval
    (``check`` vets each of its prompts; at least one record for each split)."""
    from jackpot.tasks.datasets import DatasetFormatError, load_examples
    from jackpot.tasks.synthetic import make_task

    t = cfg.task
    if t.name in ("jsonl", "parquet"):
        examples = load_examples(t.path, t.prompt_field, t.answer_field, check)
        if len(examples) < 2:
            raise DatasetFormatError(
                f"task.path={t.path!r} holds {len(examples)} record; give it at least 2 (the "
                "last ones are the eval split)"
            )
        n_eval = min(t.num_eval, max(len(examples) // 5, 1))
        return examples[:-n_eval], examples[-n_eval:]
    splits = make_task(t.spec())
    return splits.train, splits.eval


def _prompt_check(cfg: Any, tokenizer: Any, models: list[tuple[str, Any]]) -> PromptCheck:
    """A check that a prompt encodes and leaves ``rollout.max_new_tokens`` positions in the
    context (``max_position_embeddings``) of every model in ``models`` (``(key, model)``)."""
    from jackpot.config import ConfigError

    new_tokens = cfg.rollout.max_new_tokens
    contexts = [
        (int(size), key)
        for key, model in models
        if (size := getattr(model.config, "max_position_embeddings", None)) is not None
    ]
    if not contexts:
        return tokenizer.encode
    context, key = min(contexts)
    room = context - new_tokens
    if room < 1:
        raise ConfigError(
            f"rollout.max_new_tokens={new_tokens} leaves no room for a prompt in the "
            f"{context} positions of {key} (max_position_embeddings); lower it"
        )

    def check(prompt: str) -> None:
        """Raise ``ValueError`` for a prompt that does not encode or fit."""
        n = len(tokenizer.encode(prompt))
        if n > room:
            raise ValueError(
                f"the prompt has {n} tokens but {key} fits {room} ({context} positions minus "
                f"rollout.max_new_tokens={new_tokens}); shorten it or lower rollout.max_new_tokens"
            )

    return check


def _tokenizer(cfg: Any) -> Any:
    from jackpot.models import load_tokenizer
    from jackpot.tasks.tokenizer import CharTokenizer

    return load_tokenizer(cfg.policy.path, "policy") if cfg.policy.path else CharTokenizer()


def build_module(cfg: Any) -> Any:
    """Models, task, reward and sampler wired into a :class:`JackpotModule`."""
    from jackpot.models import check_same_vocab
    from jackpot.module import JackpotModule
    from jackpot.tasks.rewards import checked_reward, get_reward
    from jackpot.warmstart import run_model

    tokenizer = _tokenizer(cfg)
    policy = run_model(cfg, "policy", tokenizer)
    rollout_model = None
    if cfg.rollout.files is not None:  # offline: the files' rollouts are all there is of it
        _check_rollout_files(cfg, policy, tokenizer)
    elif cfg.algo.mode == "decoupled":  # on-policy runs never use a rollout model
        rollout_model = run_model(cfg, "rollout_model", tokenizer)
        check_same_vocab(rollout_model, policy)
    for model, key in ((policy, "policy"), (rollout_model, "rollout_model")):
        if model is not None and getattr(cfg, key).gradient_checkpointing:
            enable_activation_checkpointing(model)
    models = [("policy", policy), ("rollout_model", rollout_model)]
    check = _prompt_check(cfg, tokenizer, [(k, m) for k, m in models if m is not None])
    train, evals = _task_examples(cfg, check)
    return JackpotModule(
        cfg,
        policy,
        rollout_model,
        tokenizer,
        train,
        evals,
        checked_reward(cfg.task.reward, get_reward(cfg.task.reward)),
        cfg.sampler.build(),
    )


def enable_activation_checkpointing(model: Any) -> None:
    """transformers' activation checkpointing, non-reentrant (it works with frozen inputs and
    the two-model joint backward); the method was renamed in transformers 5.2x."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _check_rollout_files(cfg: Any, policy: Any, tokenizer: Any) -> None:
    """Every rollout file was written with the policy's vocabulary (size, and char alphabet)."""
    from jackpot.models import VocabMismatchError
    from jackpot.rollout.files import check_rollout_file, read_infos, resolve_rollout_files

    vocab_size = int(policy.get_output_embeddings().weight.shape[0])
    for info in read_infos(resolve_rollout_files(cfg.rollout.files)):
        check_rollout_file(
            info, temperature=cfg.rollout.temperature, sampler_topk=None, vocab_size=vocab_size
        )
        recorded = info.metadata.get("tokenizer")
        if not isinstance(recorded, dict) or recorded.get("type") != "char":
            continue
        alphabet = getattr(tokenizer, "alphabet", None)
        if alphabet is not None and recorded.get("alphabet") != alphabet:
            raise VocabMismatchError(
                f"rollout file {str(info.path)!r} was tokenized with the character alphabet "
                f"{recorded.get('alphabet')!r}, the policy uses {alphabet!r}"
            )


def run(cfg: Any) -> RunResult:
    """Train ``cfg`` to ``trainer.max_steps`` (resuming when ``run.resume``); return the outputs."""
    import lightning as L
    import torch

    from jackpot.config import ConfigError, to_yaml
    from jackpot.training.checkpoints import (
        AtomicCheckpointIO,
        PeriodicCheckpoint,
        latest_valid_checkpoint,
        resumable_steps,
    )
    from jackpot.training.csv_logger import MetricsCSVLogger, read_metrics
    from jackpot.training.plot import plot_run
    from jackpot.training.progress import RLProgressBar

    _quiet_lightning()
    run_dir = Path(cfg.run.dir)
    ckpt_dir = run_dir / "checkpoints"
    ckpt = latest_valid_checkpoint(ckpt_dir) if cfg.run.resume else None
    if cfg.run.resume and ckpt is None and any(ckpt_dir.glob("*.ckpt")):
        raise ConfigError(
            f"run.resume=true but no checkpoint in {str(ckpt_dir)!r} loads; delete the broken "
            "*.ckpt files to start afresh there, or choose another run.dir"
        )
    if cfg.run.resume and ckpt is None:
        print(
            f"run.resume=true: no checkpoint in {str(ckpt_dir)!r}; starting fresh", file=sys.stderr
        )
    if not cfg.run.resume and any(ckpt_dir.glob("step-*.ckpt")):
        raise ConfigError(
            f"run.dir={cfg.run.dir!r} holds checkpoints of an earlier run; pass --resume "
            "(run.resume=true) to continue it, or choose another run.dir"
        )
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    module = build_module(cfg)
    steps_done = None
    if ckpt is not None:
        trained = len(module.configure_optimizers()[0])
        steps_done = resumable_steps(ckpt, module.state_dict(), trained)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    loggers: list[Any] = [MetricsCSVLogger(run_dir, resume_from_step=steps_done)]
    if cfg.run.logger == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run_dir, name="tensorboard"))
    checkpointer = PeriodicCheckpoint(
        ckpt_dir, cfg.trainer.checkpoint_every, cfg.trainer.keep_checkpoints
    )
    strategy, precision = _strategy(cfg)
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes,
        strategy=strategy,
        precision=precision,
        max_epochs=cfg.trainer.max_steps,
        logger=loggers,
        callbacks=[RLProgressBar(), checkpointer],
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        default_root_dir=str(run_dir),
    )
    try:
        trainer.fit(module, ckpt_path=str(ckpt) if ckpt else None)
    finally:  # an error or Ctrl-C too: no rollout worker outlives the run
        module.stop_rollout_worker()
    metrics_csv = run_dir / "metrics.csv"
    plot = None
    if cfg.run.plot and trainer.is_global_zero:
        plot = plot_run(
            metrics_csv,
            run_dir / "plot.png",
            title=f"jackpot: {cfg.sampler.name}",
            budget=cfg.sampler.budget,
        )
    rows = read_metrics(metrics_csv)
    return RunResult(
        run_dir=run_dir,
        metrics_csv=metrics_csv,
        plot=plot,
        last_checkpoint=latest_valid_checkpoint(ckpt_dir),
        metrics=rows[-1] if rows else {},
    )


_DESCRIPTION = """\
Train a run: load a YAML config, apply dotted key=value overrides, build the models, task,
reward and sampler, and write metrics.csv, plot.png, config.yaml and checkpoints to run.dir.
Bad configs and inputs (data files, model directories, rewards, rollout files, checkpoints)
exit with code 2 and a one-line message naming the key or file (--debug: the traceback too).

examples:
  %(prog)s --config configs/default.yaml
  %(prog)s --config configs/default.yaml sampler.budget=0.8 run.dir=runs/b08
  %(prog)s --config configs/default.yaml sampler.lam=1.5
  %(prog)s --config configs/default.yaml sampler.name=tis
  %(prog)s --config configs/default.yaml --print-config

A command-line sampler.lam replaces the file's sampler.budget (and vice versa); a
command-line sampler.name drops the file's parameters that sampler does not take.
"""


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


_LIGHTNING_NOISE = {
    "lightning.pytorch.utilities.rank_zero": _DropMessages("💡 Tip:"),
    "lightning.pytorch.trainer.connectors.checkpoint_connector": _DropMessages(
        "`weights_only` was not set"
    ),
}
"""Lightning's product tips, and its note on every checkpoint that ``weights_only`` defaults
to False (jackpot writes full checkpoints on purpose)."""


def _quiet_lightning() -> None:
    """Silence startup noise that says nothing about the run (idempotent)."""
    for name, drop in _LIGHTNING_NOISE.items():
        if drop not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(drop)
    # Lightning 2.6's pytree helper uses an API torch 2.13 deprecates; not the user's to fix.
    warnings.filterwarnings(
        "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning
    )


def _strategy(cfg: Any) -> tuple[Any, Any]:
    """The Trainer's strategy and precision: ``fsdp`` is FSDP2 over every process (the module
    shards both models in ``configure_model``; ``bf16-mixed`` is FSDP2's own policy)."""
    if cfg.trainer.strategy != "fsdp":
        return cfg.trainer.strategy, cfg.trainer.precision
    from jackpot.training.sharding import fsdp_strategy, fsdp_trainer_precision

    world = cfg.trainer.devices * cfg.trainer.num_nodes
    return fsdp_strategy(world), fsdp_trainer_precision(cfg.trainer.precision)


def parser(prog: str = "python -m jackpot.fit") -> argparse.ArgumentParser:
    """Arguments of the fit command."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML config (defaults: the schema's values)")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config and exit (model/data paths and devices unchecked)",
    )
    p.add_argument("--resume", action="store_true", help="continue from run.dir's last checkpoint")
    p.add_argument(
        "--debug",
        action="store_true",
        help=f"print the traceback of a refused config or input too (or set {DEBUG_ENV}=1)",
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sampler.lam=1.5")
    return p


DEBUG_ENV = "JACKPOT_DEBUG"
"""Set to 1 to print the traceback of a refused config or input, as ``--debug`` does."""


def main(argv: list[str] | None = None, prog: str = "python -m jackpot.fit") -> int:
    """CLI entry: 0 on success; 2 on a bad config or input, 1 when training stopped (on NaN,
    or by a failed rollout worker), each with one line on stderr (the traceback too with
    ``--debug`` or ``JACKPOT_DEBUG=1``)."""
    from jackpot.config import load_config, to_yaml

    args = parser(prog).parse_intermixed_args(argv)
    overrides = list(args.overrides) + (["run.resume=true"] if args.resume else [])
    cfg = None
    try:
        checks = not args.print_config  # printing a cluster's config works on a laptop
        cfg = load_config(args.config, overrides, check_devices=checks, check_paths=checks)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        result = run(cfg)
    except Exception as exc:
        refusal = _refusal(exc)
        if refusal is None:  # a bug, not the user's input: Python prints the traceback
            raise
        if args.debug or os.environ.get(DEBUG_ENV, "0") not in ("", "0"):
            traceback.print_exception(exc)
        hint = _resume_hint(cfg) if refusal.resumable else ""
        print(f"{prog}: {refusal.label}: {' '.join(str(exc).split())}{hint}", file=sys.stderr)
        return refusal.code
    m = result.metrics
    shown = ", ".join(
        f"{k}={m[k]:.4g}"
        for k in ("reward/mean", "eval/accuracy", "obrs/accept_rate", "mismatch/kl_k3")
        if k in m
    )
    print(f"done: {result.run_dir} ({shown}); metrics: {result.metrics_csv}; plot: {result.plot}")
    return 0


class _Refusal(NamedTuple):
    """How the CLI reports an error that is the user's to fix."""

    code: int
    """Exit code: 2 for a bad config or input, 1 for a run stopped on non-finite updates or
    by its rollout worker."""
    label: str
    """Word after the program name: ``config error``, ``error`` or ``stopped``."""
    resumable: bool
    """The error can come part-way through a run, whose checkpoints then stay resumable."""


def _refusal(exc: Exception) -> _Refusal | None:
    """How to report ``exc`` in one line, or None for an error that is not the user's (a bug).

    The one place that decides which errors are refusals of a bad config or input.
    """
    from jackpot.config import ConfigError
    from jackpot.models import ModelLoadError, VocabMismatchError
    from jackpot.module import NonFiniteError
    from jackpot.rollout.batch import RolloutFormatError
    from jackpot.tasks.datasets import DatasetFormatError
    from jackpot.tasks.rewards import RewardError
    from jackpot.training.async_rollouts import RolloutWorkerError
    from jackpot.training.checkpoints import CheckpointError

    inputs = (DatasetFormatError, ModelLoadError, RewardError, RolloutFormatError)
    if isinstance(exc, ConfigError):
        return _Refusal(2, "config error", resumable=False)
    if isinstance(exc, CheckpointError):
        return _Refusal(2, "error", resumable=False)
    if isinstance(exc, (*inputs, VocabMismatchError)):
        return _Refusal(2, "error", resumable=True)
    if isinstance(exc, NonFiniteError):
        return _Refusal(1, "stopped", resumable=False)
    if isinstance(exc, RolloutWorkerError):
        return _Refusal(1, "stopped", resumable=True)
    return None


def _resume_hint(cfg: Any) -> str:
    """Where a run that failed part-way on an input keeps its checkpoints, and how to go on."""
    from jackpot.training.checkpoints import latest_valid_checkpoint

    if cfg is None:
        return ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a corrupt newest checkpoint: resuming skips it too
        last = latest_valid_checkpoint(Path(cfg.run.dir) / "checkpoints")
    return (
        "" if last is None else f"; run.dir keeps its last checkpoint {last}: rerun with --resume"
    )


if __name__ == "__main__":
    sys.exit(main())
