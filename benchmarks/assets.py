"""Local real-vocabulary assets for benchmarks: a tokenizer, random Qwen2 checkpoints, a task.

Everything is built on this machine (nothing is downloaded): a word-level tokenizer with
:data:`VOCAB_SIZE` entries (Qwen2/Qwen3's output size) saved with ``save_pretrained``, two
random-init Qwen2-style models of that vocabulary saved beside a copy of it, and a JSONL task
whose prompts and answers are words of the vocabulary. ``python -m jackpot.fit`` loads them
as it would real checkpoints (``policy.path``, ``rollout_model.path``, ``task.name=jsonl``).
:func:`build_assets` writes them once under a folder and reuses them while the spec is the same.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT

__all__ = ["VOCAB_SIZE", "AssetSpec", "Assets", "build_assets", "fit_overrides"]

VOCAB_SIZE = 151_936
"""Output size of Qwen2/Qwen3 checkpoints (the tokenizer's entries padded to a multiple of 128)."""

EOS = "<|endoftext|>"
"""End-of-text token (the last id), also the padding token, as in Qwen's tokenizers."""

DEFAULT_DIR = ROOT / ".cache" / "bench-assets"
"""Where :func:`build_assets` writes by default (ignored by git)."""


@dataclass(frozen=True)
class AssetSpec:
    """Sizes of the assets; a folder built for one spec is rebuilt for another."""

    vocab_size: int = VOCAB_SIZE
    """Tokenizer entries = output size of both models."""
    policy: tuple[int, int, int] = (64, 2, 4)
    """(hidden size, layers, attention heads) of the policy."""
    rollout: tuple[int, int, int] = (32, 2, 2)
    """(hidden size, layers, attention heads) of the rollout model."""
    prompt_words: int = 4
    """Random 3-letter words per prompt (two tokens each: the space joins the first letter)."""
    max_positions: int = 512
    """Longest prompt + response the models accept."""
    num_examples: int = 512
    """JSONL records (fit keeps the last fifth, at most ``task.num_eval``, for evaluation)."""
    seed: int = 0
    """Seed of the weights and of the task."""


@dataclass(frozen=True)
class Assets:
    """Paths of built assets."""

    root: Path
    policy: Path
    """Policy checkpoint folder (with the tokenizer)."""
    rollout: Path
    """Rollout model checkpoint folder (with the same tokenizer)."""
    task: Path
    """JSONL file with ``prompt`` and ``answer`` fields."""
    spec: AssetSpec


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins of the bytes that byte-level BPE works on (GPT-2's map)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def build_tokenizer(vocab_size: int) -> Any:
    """A Qwen-style byte-level BPE tokenizer with exactly ``vocab_size`` entries (>= 257).

    Ids 0-255 are the bytes, then pairs of bytes (up to 65,536 merges), then byte triples
    (``pair + byte`` merges) until the vocabulary is full; the last id is :data:`EOS`. The
    split regex and byte-level steps are Qwen2's, so ``AutoTokenizer`` (``Qwen2Tokenizer``)
    rebuilds it identically from ``tokenizer.json``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    alphabet = _byte_alphabet()
    regular = vocab_size - 1
    if not 256 <= regular <= 256 + 256**2 + 256**3:
        raise ValueError(
            f"vocab_size must be in [257, {256 + 256**2 + 256**3 + 1}], got {vocab_size}"
        )
    pairs = ((a, b) for a in alphabet for b in alphabet)
    triples = ((a + b, c) for a in alphabet for b in alphabet for c in alphabet)
    merges = list(itertools.islice(itertools.chain(pairs, triples), regular - 256))
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab[EOS] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def build_checkpoint(
    directory: Path,
    size: tuple[int, int, int],
    vocab_size: int,
    max_positions: int,
    seed: int,
    tokenizer: Any,
) -> None:
    """A random-init Qwen2 model (tied embeddings, fp32), saved with ``tokenizer`` beside it."""
    from jackpot.models import ModelSpec, build_model

    hidden, layers, heads = size
    spec = ModelSpec(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        max_position_embeddings=max_positions,
        seed=seed,
    )
    model = build_model(spec)
    model.config.eos_token_id = model.config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def write_task(path: Path, spec: AssetSpec) -> None:
    """``num_examples`` records: a prompt of random 3-letter words, the answer its last word."""
    rng = random.Random(spec.seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(spec.num_examples):
            words = ["".join(rng.choices(letters, k=3)) for _ in range(spec.prompt_words)]
            handle.write(json.dumps({"prompt": " ".join(words), "answer": words[-1]}) + "\n")


def build_assets(root: Path = DEFAULT_DIR, spec: AssetSpec | None = None) -> Assets:
    """Build the tokenizer, both checkpoints and the task under ``root`` (reused if up to date).

    Built in a sibling folder and renamed, so concurrent callers never see half an asset set.
    A folder built for another spec is replaced; any other non-empty folder is refused.
    """
    spec = spec or AssetSpec()
    wanted = json.dumps(asdict(spec), sort_keys=True)
    if _stamp(root) == wanted:
        return _assets(root, spec)
    if _stamp(root) is None and root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{str(root)!r} is not empty and holds no assets.json; not built here"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    built = _assets(tmp, spec)
    tokenizer = build_tokenizer(spec.vocab_size)
    for directory, size, seed in (
        (built.policy, spec.policy, spec.seed),
        (built.rollout, spec.rollout, spec.seed + 1),
    ):
        build_checkpoint(directory, size, spec.vocab_size, spec.max_positions, seed, tokenizer)
    write_task(built.task, spec)
    (tmp / "assets.json").write_text(wanted)
    if _stamp(root) == wanted:  # another process finished first
        shutil.rmtree(tmp)
    else:
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    return _assets(root, spec)


def _stamp(root: Path) -> str | None:
    """The spec a folder was built for (its ``assets.json``), or None."""
    stamp = root / "assets.json"
    return stamp.read_text() if stamp.is_file() else None


def _assets(root: Path, spec: AssetSpec) -> Assets:
    return Assets(root, root / "policy", root / "rollout", root / "task.jsonl", spec)


def fit_overrides(assets: Assets) -> list[str]:
    """``jackpot.fit`` overrides that load the assets: both model paths and the JSONL task."""
    return [
        f"policy.path={assets.policy}",
        f"rollout_model.path={assets.rollout}",
        "task.name=jsonl",
        f"task.path={assets.task}",
        "task.prompt_field=prompt",
        "task.answer_field=answer",
        "warmstart.steps=0",
    ]
