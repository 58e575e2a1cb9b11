"""Models for jackpot: tiny random ones from configs, real ones from local paths, vocab checks.

Tiny Qwen2/Llama models (hidden 64-512) make every experiment runnable on a CPU; real
checkpoints are loaded from a local directory only (``local_files_only=True``: no network).
A rollout model and a policy must share one vocabulary, or ``p_inf`` and ``p_target`` are
distributions over different sets and every ratio between them is meaningless; and every id
the tokenizer can produce (pad and EOS included) must index the model's output layer.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from transformers import (
    CONFIG_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers import __version__ as TRANSFORMERS_VERSION
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
from transformers.utils import logging as hf_logging

from jackpot.errors import describe

__all__ = [
    "ModelLoadError",
    "ModelSpec",
    "VocabMismatchError",
    "build_model",
    "check_same_vocab",
    "check_tokenizer_fits",
    "from_pretrained",
    "load_tokenizer",
    "set_pad_token",
]

Family = Literal["qwen2", "llama"]


@dataclass(frozen=True)
class ModelSpec:
    """A tiny decoder-only model to build from a transformers config with random weights."""

    vocab_size: int
    """Output-layer size; must match the tokenizer (``CharTokenizer.vocab_size``)."""
    family: Family = "qwen2"
    """Architecture: ``qwen2`` (biased QKV) or ``llama``."""
    hidden_size: int = 64
    """Width; 128 x 2 layers is a cheap rollout model, 256-512 x 4-6 a policy."""
    num_layers: int = 2
    """Decoder blocks."""
    num_heads: int = 4
    """Attention heads; must divide ``hidden_size``."""
    num_kv_heads: int | None = None
    """Key/value heads for grouped-query attention; None = ``num_heads``."""
    intermediate_size: int | None = None
    """MLP width; None = ``4 * hidden_size``."""
    max_position_embeddings: int = 512
    """Longest prompt + response; the synthetic tasks need well under 64."""
    seed: int = 0
    """Seed of the random initialisation (the global RNG is left untouched)."""

    def __post_init__(self) -> None:
        """Validate sizes; messages name the field."""
        if self.family not in ("qwen2", "llama"):
            raise ValueError(f"family must be 'qwen2' or 'llama', got {self.family!r}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size})"
            )
        kv_heads = self.num_kv_heads or self.num_heads
        if self.num_heads % kv_heads:
            raise ValueError(f"num_kv_heads ({kv_heads}) must divide num_heads ({self.num_heads})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (used in cache keys and rollout metadata)."""
        return asdict(self)


def build_model(spec: ModelSpec) -> PreTrainedModel:
    """Random-init model for ``spec``; same spec and seed give the same weights."""
    common: dict[str, Any] = {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size or 4 * spec.hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads or spec.num_heads,
        "max_position_embeddings": spec.max_position_embeddings,
        "tie_word_embeddings": True,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        if spec.family == "qwen2":
            model: PreTrainedModel = Qwen2ForCausalLM(Qwen2Config(**common))
        else:
            model = LlamaForCausalLM(LlamaConfig(**common))
    return model


class ModelLoadError(ValueError):
    """A model directory is not a loadable causal LM with its tokenizer; names the key to fix."""


_LOAD_ERRORS = (OSError, ValueError, RuntimeError, SafetensorError)
"""What transformers raises on a directory it cannot load (a bug of ours raises others)."""

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
"""Files that hold a tokenizer's vocabulary; without one transformers builds an empty one."""

_SAVE_HINT = "write it with save_pretrained (model and tokenizer) or download it beforehand"


def _local_dir(path: str | Path, key: str) -> Path:
    """``path`` as an existing, non-empty directory, or :class:`ModelLoadError` naming ``key``
    (we never download)."""
    directory = Path(path).expanduser()
    where = f"{key}.path={str(directory)!r}"
    if not directory.is_dir():
        raise ModelLoadError(
            f"{where} does not exist; jackpot loads checkpoints from local directories only "
            "(download them beforehand, e.g. with `hf download`)"
        )
    if not any(directory.iterdir()):
        raise ModelLoadError(f"{where} is empty; {_SAVE_HINT}")
    return directory


def _checkpoint_config(directory: Path, key: str) -> PretrainedConfig:
    """The config of the checkpoint in ``directory``, checked to be a causal LM that this
    transformers knows; :class:`ModelLoadError` naming ``key`` and what to fix otherwise."""
    where = f"{key}.path={str(directory)!r}"
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{where} has no config.json, so it is no checkpoint; {_SAVE_HINT}")
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"{where}: config.json is not valid JSON ({describe(exc)}); restore it from the "
            "original checkpoint"
        ) from None
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if model_type is None:
        raise ModelLoadError(f"{where}: config.json holds no model_type; {_SAVE_HINT}")
    if model_type not in CONFIG_MAPPING:
        raise ModelLoadError(
            f"{where}: config.json has model_type={model_type!r}, which transformers "
            f"{TRANSFORMERS_VERSION} does not know; fix model_type or upgrade transformers"
        )
    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
    except _LOAD_ERRORS as exc:
        raise ModelLoadError(f"{where}: config.json does not load ({describe(exc)})") from None
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ModelLoadError(
            f"{where}: model_type={model_type!r} is not a causal language model "
            "(transformers has no AutoModelForCausalLM for it); use a decoder-only LM"
        )
    return config


@contextlib.contextmanager
def _transformers_errors_only() -> Iterator[None]:
    """Silence transformers' warnings (its multi-line load report) while a load we check
    ourselves runs; errors still show."""
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def from_pretrained(
    path: str | Path, dtype: torch.dtype | None = None, key: str = "policy"
) -> PreTrainedModel:
    """Load a causal LM from a local directory (``local_files_only=True``).

    Every weight must be in the files with the config's shape: a missing or mismatched tensor
    raises :class:`ModelLoadError` (transformers would initialise it randomly or raise with a
    pointer to its log); ``key`` is the config section named in errors.
    """
    directory = _local_dir(path, key)
    config = _checkpoint_config(directory, key)
    where = f"{key}.path={str(directory)!r}"
    try:
        with _transformers_errors_only():
            loaded: Any = AutoModelForCausalLM.from_pretrained(
                directory,
                config=config,
                local_files_only=True,
                dtype=dtype,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
            )
    except _LOAD_ERRORS as exc:
        raise ModelLoadError(
            f"{where}: the weights do not load ({describe(exc)}); {_SAVE_HINT}"
        ) from None
    model: PreTrainedModel
    model, info = loaded
    missing, mismatched = sorted(info["missing_keys"]), sorted(info["mismatched_keys"])
    if mismatched:
        name, found, wanted = mismatched[0]
        raise ModelLoadError(
            f"{where}: {len(mismatched)} weight(s) do not fit config.json, e.g. {name} has shape "
            f"{tuple(found)} but the config asks {tuple(wanted)}; the weights and config.json "
            "come from different models"
        )
    if missing:
        raise ModelLoadError(
            f"{where}: {len(missing)} weight(s) are missing from the files, e.g. {missing[0]}; "
            f"{_SAVE_HINT}"
        )
    return model


def load_tokenizer(path: str | Path, key: str = "policy") -> Any:
    """Load the tokenizer stored next to a local checkpoint (``local_files_only=True``).

    A directory without a tokenizer file raises :class:`ModelLoadError` (transformers would
    build an empty tokenizer from the model type). A tokenizer without a pad token gets its
    EOS token as pad (:func:`set_pad_token`).
    """
    directory = _local_dir(path, key)
    where = f"{key}.path={str(directory)!r}"
    if (directory / "config.json").is_file():  # transformers reads it to pick the class
        _checkpoint_config(directory, key)
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"{where} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); save the "
            "model's tokenizer next to it (tokenizer.save_pretrained)"
        )
    try:
        with _transformers_errors_only():
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except _LOAD_ERRORS as exc:
        raise ModelLoadError(f"{where}: the tokenizer does not load ({describe(exc)})") from None
    return set_pad_token(tokenizer)


def set_pad_token(tokenizer: Any) -> Any:
    """Use EOS as the pad token when none is set (saying so on stderr); return ``tokenizer``.

    Rollouts left-pad prompts and right-pad responses with the pad id, always under a zero
    mask, so any in-vocabulary id serves; without one, padding has no id at all.
    """
    if tokenizer.pad_token_id is not None:
        return tokenizer
    if tokenizer.eos_token_id is None:
        raise VocabMismatchError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has neither a pad nor an "
            "EOS token; set one (tokenizer.pad_token / eos_token) and save it with the model"
        )
    tokenizer.pad_token = tokenizer.eos_token
    print(
        f"tokenizer has no pad token; padding with its EOS token {tokenizer.eos_token!r} "
        f"(id {tokenizer.eos_token_id})",
        file=sys.stderr,
    )
    return tokenizer


def check_tokenizer_fits(tokenizer: Any, model: Any, key: str) -> None:
    """Raise :class:`VocabMismatchError` unless every id ``tokenizer`` can produce, the pad and
    EOS ids included, indexes the output layer of ``model`` (``key``: the config section)."""
    size = int(model.get_output_embeddings().weight.shape[0])
    ids = {"pad": tokenizer.pad_token_id, "eos": tokenizer.eos_token_id}
    for name, token_id in ids.items():
        if token_id is None or not 0 <= token_id < size:
            raise VocabMismatchError(
                f"the tokenizer's {name} id is {token_id!r}, outside the {size} output logits "
                f"of {key} (allowed: 0 to {size - 1}); fix the tokenizer next to {key}.path"
            )
    if len(tokenizer) > size:
        raise VocabMismatchError(
            f"the tokenizer has {len(tokenizer)} tokens but {key} only {size} output logits; "
            f"ids past the end would crash the embedding lookup; fix the tokenizer or {key}.path"
        )


class VocabMismatchError(ValueError):
    """Rollout model and policy do not share a vocabulary."""


def check_same_vocab(rollout: Any, policy: Any) -> None:
    """Raise :class:`VocabMismatchError` unless two tokenizers, or two models, share a vocabulary.

    Tokenizers (anything with ``get_vocab()``) must map the same strings to the same ids.
    Models (anything with ``get_output_embeddings()``) must have output layers of one size:
    real checkpoints pad that layer beyond the tokenizer, so sizes are the comparable thing.
    Check the tokenizers and the models in two calls.
    """
    if hasattr(rollout, "get_vocab") and hasattr(policy, "get_vocab"):
        _check_tokenizers(rollout.get_vocab(), policy.get_vocab())
    elif hasattr(rollout, "get_output_embeddings") and hasattr(policy, "get_output_embeddings"):
        sizes = [m.get_output_embeddings().weight.shape[0] for m in (rollout, policy)]
        if sizes[0] != sizes[1]:
            raise VocabMismatchError(
                f"rollout model has {sizes[0]} output logits but the policy has {sizes[1]}; "
                "both must score the same vocabulary"
            )
    else:
        raise TypeError(
            "check_same_vocab compares two tokenizers (get_vocab) or two models "
            f"(get_output_embeddings), got {type(rollout).__name__} and {type(policy).__name__}"
        )


def _check_tokenizers(rollout_vocab: dict[str, int], policy_vocab: dict[str, int]) -> None:
    """Same token -> id mapping, or an error listing a few differences."""
    if rollout_vocab == policy_vocab:
        return
    differing = sorted(
        tok
        for tok in set(rollout_vocab) | set(policy_vocab)
        if rollout_vocab.get(tok) != policy_vocab.get(tok)
    )
    examples = ", ".join(
        f"{tok!r}: {rollout_vocab.get(tok)} vs {policy_vocab.get(tok)}" for tok in differing[:5]
    )
    raise VocabMismatchError(
        f"rollout and policy tokenizers differ on {len(differing)} token(s) "
        f"(sizes {len(rollout_vocab)} vs {len(policy_vocab)}); e.g. {examples}"
    )
