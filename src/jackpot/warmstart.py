"""Supervised warm start of tiny models on a synthetic task, cached on disk.

RL from a random model earns zero reward, so every GRPO advantage is zero and nothing is
learned. A few hundred steps of plain supervised fine-tuning on the task's train split give
the rollout model and the policy a non-zero reward to start from. Weights are cached under a
hash of everything that determines them, written atomically (temp file + rename), and reused.
Training shows a progress bar on stderr (steps, loss); a reused cache entry is said in one line.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import Tensor
from tqdm import tqdm
from transformers import PreTrainedModel

from jackpot.errors import describe
from jackpot.models import ModelSpec, build_model, check_tokenizer_fits, from_pretrained
from jackpot.tasks.synthetic import Example, TaskSpec, make_task
from jackpot.tasks.tokenizer import CharTokenizer

if TYPE_CHECKING:
    from jackpot.config import JackpotConfig, ModelConfig

__all__ = [
    "DEFAULT_CACHE_DIR",
    "SFTConfig",
    "WarmStart",
    "cache_key",
    "make_model",
    "run_model",
    "sft_batch",
    "train_sft",
    "warm_start",
]

DEFAULT_CACHE_DIR = Path("~/.cache/jackpot/warmstart")
_CACHE_SCHEMA = 1
"""Bump when the training recipe changes, so stale weights are not reused."""


@dataclass(frozen=True)
class SFTConfig:
    """Hyper-parameters of the warm start; all of them are part of the cache key."""

    steps: int = 400
    """Optimiser steps; tests use a handful."""
    batch_size: int = 64
    """Examples per step."""
    lr: float = 3e-3
    """Peak AdamW learning rate (tiny models tolerate a large one), cosine-decayed to 10 %."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    seed: int = 0
    """Seed of the batch order."""

    def __post_init__(self) -> None:
        """Validate; messages name the field."""
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class WarmStart:
    """A warm-started model, where its weights live, and whether they came from the cache."""

    model: PreTrainedModel
    path: Path
    from_cache: bool
    """True when the weights were loaded instead of trained (no optimiser step was run)."""


def cache_key(spec: ModelSpec, task: TaskSpec, config: SFTConfig, tokenizer: CharTokenizer) -> str:
    """Hex digest identifying the weights ``warm_start`` would produce."""
    content = {
        "schema": _CACHE_SCHEMA,
        "model": spec.to_dict(),
        "task": task.to_dict(),
        "sft": asdict(config),
        "vocab": tokenizer.get_vocab(),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:32]


def sft_batch(examples: list[Example], tokenizer: CharTokenizer) -> tuple[Tensor, Tensor, Tensor]:
    """``(ids, attention_mask, labels)``, each ``(B, L)``: bos+prompt+answer+eos, right-padded.

    ``labels`` is -100 on the prompt and padding, so only the answer and EOS are learned.
    """
    prompts = [tokenizer.encode(e.prompt) for e in examples]
    answers = [tokenizer.encode(e.answer, add_bos=False, add_eos=True) for e in examples]
    width = max(len(p) + len(a) for p, a in zip(prompts, answers, strict=True))
    ids = torch.full((len(examples), width), tokenizer.pad_token_id, dtype=torch.int64)
    labels = torch.full((len(examples), width), -100, dtype=torch.int64)
    mask = torch.zeros((len(examples), width), dtype=torch.int64)
    for row, (p, a) in enumerate(zip(prompts, answers, strict=True)):  # once per batch
        ids[row, : len(p) + len(a)] = torch.tensor(p + a)
        labels[row, len(p) : len(p) + len(a)] = torch.tensor(a)
        mask[row, : len(p) + len(a)] = 1
    return ids, mask, labels


def train_sft(
    model: PreTrainedModel,
    examples: list[Example],
    tokenizer: CharTokenizer,
    config: SFTConfig,
    desc: str | None = None,
) -> list[float]:
    """Plain AdamW loop of next-token cross-entropy on answers; returns the loss per step.

    ``desc``: label of a progress bar on stderr (steps, loss); None = no bar.
    """
    if not examples:
        raise ValueError("the warm start needs at least one training example")
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.1 + 0.45 * (1 + math.cos(math.pi * step / max(config.steps, 1)))
    )
    model.train()
    losses: list[float] = []
    with tqdm(
        total=config.steps, desc=desc, file=sys.stderr, disable=desc is None, mininterval=0.5
    ) as bar:
        for _ in range(config.steps):
            picks = torch.randint(len(examples), (config.batch_size,), generator=generator).tolist()
            ids, mask, labels = sft_batch([examples[i] for i in picks], tokenizer)
            logits = model(input_ids=ids, attention_mask=mask).logits  # (B, L, V)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            bar.update(1)
    model.eval()
    return losses


def warm_start(
    spec: ModelSpec,
    task: TaskSpec,
    tokenizer: CharTokenizer,
    config: SFTConfig | None = None,
    cache_dir: str | Path | None = None,
) -> WarmStart:
    """Model ``spec`` fine-tuned on ``task``'s train split, loaded from the cache when present."""
    config = config or SFTConfig()
    if spec.vocab_size != tokenizer.vocab_size:
        raise ValueError(
            f"model vocab_size {spec.vocab_size} != tokenizer vocab_size {tokenizer.vocab_size}"
        )
    directory = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser()
    key = cache_key(spec, task, config, tokenizer)
    path = directory / f"{spec.family}-h{spec.hidden_size}-l{spec.num_layers}-{key}.safetensors"
    model = build_model(spec)
    name = f"{spec.family} {spec.hidden_size}x{spec.num_layers}"
    if path.is_file():
        try:
            load_model(model, path)
        except (SafetensorError, OSError, RuntimeError) as exc:  # a damaged cache is rebuilt
            _say(f"warm start: cached {path} does not load ({describe(exc)}); fine-tuning again")
        else:
            model.eval()
            _say(f"warm start: reusing {name} ({config.steps} steps on {task.name}) from {path}")
            return WarmStart(model=model, path=path, from_cache=True)
    _say(
        f"warm start: fine-tuning {name} on {task.name} for {config.steps} steps (once; "
        f"cached in {directory})"
    )
    start = time.perf_counter()
    losses = train_sft(model, make_task(task).train, tokenizer, config, desc=f"warm start {name}")
    _save_atomically(model, path, {"final_loss": losses[-1] if losses else None, "key": key})
    final = f", final loss {losses[-1]:.3f}" if losses else ""
    _say(f"warm start: {name} done in {time.perf_counter() - start:.0f} s{final}")
    return WarmStart(model=model, path=path, from_cache=False)


def make_model(
    model: ModelConfig,
    key: str,
    tokenizer: Any,
    task: TaskSpec | None,
    sft: SFTConfig,
    cache_dir: str | Path | None = None,
) -> PreTrainedModel:
    """The one place models are made: ``model.path``'s checkpoint (checked against the
    tokenizer), else its tiny model, warm-started on ``task`` (cached) unless ``task`` is None
    or ``sft.steps`` is 0, with ``model.attn_implementation``'s attention kernel. ``key`` is
    the config section named in errors."""
    if model.path is not None:
        made = from_pretrained(model.path, key=key)
        check_tokenizer_fits(tokenizer, made, key)
    elif task is None or sft.steps == 0:
        made = build_model(model.spec(tokenizer.vocab_size))
    else:
        made = warm_start(model.spec(tokenizer.vocab_size), task, tokenizer, sft, cache_dir).model
    if model.attn_implementation is not None:
        try:
            made.set_attn_implementation(model.attn_implementation)
        except (ValueError, ImportError) as exc:
            from jackpot.config import ConfigError

            raise ConfigError(f"{key}.attn_implementation: {describe(exc)}") from None
    return made


def run_model(cfg: JackpotConfig, key: str, tokenizer: Any) -> PreTrainedModel:
    """The ``policy`` or ``rollout_model`` of a run config, with its warm start (none on a
    local dataset: there is no synthetic train split to fine-tune on)."""
    m, w = getattr(cfg, key), cfg.warmstart
    steps = w.policy_steps if key == "policy" and w.policy_steps is not None else w.steps
    task = None if cfg.task.name in ("jsonl", "parquet") else cfg.task.spec()
    sft = SFTConfig(steps=steps, batch_size=w.batch_size, lr=w.lr, seed=m.seed)
    return make_model(m, key, tokenizer, task, sft, w.cache_dir)


def _say(message: str) -> None:
    """One progress line on stderr (stdout stays for results)."""
    print(message, file=sys.stderr, flush=True)


def _save_atomically(model: PreTrainedModel, path: Path, info: dict[str, Any]) -> None:
    """Write the weights to a temp file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_model(model, tmp, metadata={"jackpot.warmstart": json.dumps(info)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
