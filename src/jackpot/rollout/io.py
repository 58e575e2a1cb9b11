"""On-disk rollouts: one safetensors file with a JSON header in its metadata (schema 1).

Any engine can write this file; the loader validates it completely, so a trainer never sees a
malformed batch. Safetensors stores raw tensors and a JSON header only, so loading never
unpickles anything (safe for files from elsewhere).

File layout
-----------
A single ``.safetensors`` file. Its ``__metadata__`` holds exactly one key,
``"jackpot.rollouts"``, whose value is a JSON string::

    {
      "format": "jackpot.rollouts",
      "schema_version": 1,
      "sampling": {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 32,
                   "stop_token_ids": [2], "logprobs_k": 8},
      "pad_token_id": 0,
      "vocab_size": 151936,          # or null; if set, every id must be < vocab_size
      "prompts": ["..."],            # or null; N strings, one per response row
      "answers": ["..."],            # or null; N strings
      "metadata": {}                 # anything JSON (model name, task, seed...)
    }

Tensors (``N`` responses, ``P`` prompt width, ``T`` response width, ``k`` top log-probs):

==================  ==============  ============================  =================================
name                shape           dtype (accepted -> stored)    meaning
==================  ==============  ============================  =================================
``prompt_ids``      ``(N, P)``      int64 (int32)                 prompt, LEFT-padded with pad id
``prompt_mask``     ``(N, P)``      int64 (bool, u8, i8, i32)     1 on prompt tokens, 0 on padding
``response_ids``    ``(N, T)``      int64 (int32)                 sampled tokens, right-padded
``response_mask``   ``(N, T)``      int64 (bool, u8, i8, i32)     1 up to and incl. EOS, then 0
``logp_inf``        ``(N, T)``      float32 (float64)             log-prob of the sampled token
``topk_ids``        ``(N, T, k)``   int64 (int32)                 k most likely tokens, descending
``topk_logp``       ``(N, T, k)``   float32 (float64)             their log-probs
``finished``        ``(N,)``        bool (u8, i8, i32, i64: 0/1)  ended by a stop token
``group_ids``       ``(N,)``        int64 (int32)                 prompt index (GRPO group)
``rewards``         ``(N,)``        float32 (float64), optional   reward per response
==================  ==============  ============================  =================================

Log-probs must be those of the distribution the token was drawn from: temperature applied,
renormalised over the top-k / top-p kept set (``-inf`` outside it). They must be ``<= 0``
(tolerance 1e-5), never NaN, and finite where ``response_mask`` is 1. At every position with
mask 1, the sampled token must appear in ``topk_ids`` with ``topk_logp`` equal to
``logp_inf`` (if it is not among the k best, put it in the last slot). Values at mask-0
positions are not used; the transformers engine writes a point mass on the pad token there.

From vLLM (``SamplingParams(n=G, logprobs=k, temperature=..., top_p=..., top_k=...)``): for
request ``i`` and completion ``j`` write row ``i * G + j`` with ``group_ids = i``;
``response_ids`` = ``output.token_ids``; ``logp_inf[t]`` = ``output.logprobs[t][token].logprob``;
``topk_*`` from the ``k`` best entries of ``output.logprobs[t]`` (ordered by ``rank``; vLLM adds
the sampled token as a ``k+1``-th entry when it is not among them: put it in the last slot);
``finished = output.finish_reason == "stop"``. vLLM reports the raw model's log-probs by
default; to get the sampling distribution, create the engine with
``logprobs_mode="processed_logprobs"`` (vLLM >= 0.10.2), and record the temperature / top-k /
top-p it really used (a checkpoint's ``generation_config`` can set them silently). Then::

    from safetensors.numpy import save_file
    save_file(arrays, "rollouts.safetensors", metadata={"jackpot.rollouts": json.dumps(header)})
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from jackpot.rollout.batch import RolloutBatch, RolloutFormatError
from jackpot.rollout.engine import SamplingParams

T = TypeVar("T")
"""What a reader of an open rollout file returns."""

__all__ = [
    "FORMAT_NAME",
    "HEADER_KEY",
    "SCHEMA_VERSION",
    "RolloutFileInfo",
    "load_rollouts",
    "read_rollout_info",
    "save_rollouts",
]

FORMAT_NAME = "jackpot.rollouts"
HEADER_KEY = "jackpot.rollouts"
SCHEMA_VERSION = 1

_INT = (torch.int32, torch.int64)
_MASK = (torch.bool, torch.uint8, torch.int8, torch.int32, torch.int64)
_FLOAT = (torch.float32, torch.float64)
_TENSORS: dict[str, tuple[tuple[torch.dtype, ...], torch.dtype]] = {
    "prompt_ids": (_INT, torch.int64),
    "prompt_mask": (_MASK, torch.int64),
    "response_ids": (_INT, torch.int64),
    "response_mask": (_MASK, torch.int64),
    "logp_inf": (_FLOAT, torch.float32),
    "topk_ids": (_INT, torch.int64),
    "topk_logp": (_FLOAT, torch.float32),
    "finished": (_MASK, torch.bool),
    "group_ids": (_INT, torch.int64),
}
"""Required tensor -> (accepted dtypes, dtype in memory)."""
_OPTIONAL_TENSORS = {"rewards": (_FLOAT, torch.float32)}
_HEADER_KEYS = {"format", "schema_version", "sampling", "pad_token_id", "vocab_size"}
_OPTIONAL_HEADER_KEYS = {"prompts", "answers", "metadata"}


def save_rollouts(batch: RolloutBatch, path: str | Path) -> Path:
    """Validate ``batch`` and write it to ``path`` atomically (temp file + rename); returns path."""
    batch.validate()
    target = Path(path)
    header = {
        "format": FORMAT_NAME,
        "schema_version": SCHEMA_VERSION,
        "sampling": batch.params.to_dict(),
        "pad_token_id": batch.pad_token_id,
        "vocab_size": batch.vocab_size,
        "prompts": batch.prompts,
        "answers": batch.answers,
        "metadata": batch.metadata,
    }
    tensors = {name: getattr(batch, name).detach().cpu().contiguous() for name in _TENSORS}
    if batch.rewards is not None:
        tensors["rewards"] = batch.rewards.detach().cpu().contiguous()
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file(tensors, tmp, metadata={HEADER_KEY: json.dumps(header)})
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _read(path: str | Path, read: Callable[[Any], T]) -> tuple[Path, dict[str, Any], T]:
    """Open a rollout file, parse its header and apply ``read`` to the open handle.

    ``FileNotFoundError`` for a missing file; :class:`RolloutFormatError` for one that is not
    a readable safetensors file or whose header is malformed.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"rollout file {str(file)!r} does not exist")
    try:
        with safe_open(file, framework="pt") as handle:
            return file, _parse_header(handle.metadata() or {}), read(handle)
    except (SafetensorError, OSError) as err:
        raise RolloutFormatError("file", "a readable safetensors file", f"{err}") from None


def load_rollouts(path: str | Path) -> RolloutBatch:
    """Read and fully validate a rollout file; raises :class:`RolloutFormatError` on any defect."""
    _, header, raw = _read(
        path,
        lambda handle: {name: handle.get_tensor(name) for name in handle.keys()},  # noqa: SIM118
    )
    tensors = _convert_tensors(raw)
    batch = RolloutBatch(
        params=_sampling(header["sampling"]),
        pad_token_id=_int_field(header, "pad_token_id"),
        vocab_size=None if header["vocab_size"] is None else _int_field(header, "vocab_size"),
        prompts=header.get("prompts"),
        answers=header.get("answers"),
        metadata=_dict_field(header, "metadata"),
        **tensors,
    )
    batch.validate()
    return batch


@dataclass(frozen=True)
class RolloutFileInfo:
    """What a rollout file's header and tensor shapes say, read without loading any tensor."""

    path: Path
    """The file."""
    params: SamplingParams
    """The sampling parameters that define its ``p_inf``."""
    vocab_size: int | None
    """Size of the generating model's output layer, when recorded."""
    num_sequences: int
    """``N``, responses in the file."""
    logprobs_k: int
    """``k``, top log-probs of ``p_inf`` recorded per position (last dim of ``topk_ids``)."""
    has_rewards: bool
    """The optional ``rewards`` tensor is present."""
    has_texts: bool
    """Both ``prompts`` and ``answers`` texts are present (a reward function can score it)."""
    metadata: dict[str, Any]
    """The header's free metadata."""

    @classmethod
    def of_batch(cls, batch: RolloutBatch, path: str | Path) -> RolloutFileInfo:
        """The same summary of a batch already loaded from ``path``."""
        return cls(
            path=Path(path),
            params=batch.params,
            vocab_size=batch.vocab_size,
            num_sequences=batch.num_sequences,
            logprobs_k=int(batch.topk_ids.shape[-1]),
            has_rewards=batch.rewards is not None,
            has_texts=batch.prompts is not None and batch.answers is not None,
            metadata=batch.metadata,
        )


def read_rollout_info(path: str | Path) -> RolloutFileInfo:
    """Header and shapes of a rollout file, cheaply (tensor values are not read or checked).

    Raises :class:`RolloutFormatError` for an unreadable file, a bad header, missing or
    unknown tensors; :func:`load_rollouts` still validates the values when the file is used.
    """
    file, header, shapes = _read(
        path,
        lambda h: {name: h.get_slice(name).get_shape() for name in h.keys()},  # noqa: SIM118
    )
    names = set(shapes)
    missing = sorted(set(_TENSORS) - names)
    if missing:
        raise RolloutFormatError("tensors", f"all of {sorted(_TENSORS)}", f"{missing} missing")
    topk_shape, ids_shape = shapes["topk_ids"], shapes["response_ids"]
    if len(topk_shape) != 3 or len(ids_shape) != 2:
        raise RolloutFormatError(
            "topk_ids", "shape (N, T, k) beside response_ids (N, T)", f"{topk_shape}, {ids_shape}"
        )
    return RolloutFileInfo(
        path=file,
        params=_sampling(header["sampling"]),
        vocab_size=None if header["vocab_size"] is None else _int_field(header, "vocab_size"),
        num_sequences=int(ids_shape[0]),
        logprobs_k=int(topk_shape[-1]),
        has_rewards="rewards" in names,
        has_texts=header.get("prompts") is not None and header.get("answers") is not None,
        metadata=_dict_field(header, "metadata"),
    )


def _parse_header(metadata: dict[str, str]) -> dict[str, Any]:
    """The JSON header from the safetensors metadata, with format, version and keys checked."""
    if HEADER_KEY not in metadata:
        raise RolloutFormatError(
            "header", f"metadata key {HEADER_KEY!r}", f"keys {sorted(metadata)}"
        )
    try:
        header = json.loads(metadata[HEADER_KEY])
    except json.JSONDecodeError as err:
        raise RolloutFormatError("header", "valid JSON", f"{err.msg}") from None
    if not isinstance(header, dict):
        raise RolloutFormatError("header", "a JSON object", type(header).__name__)
    if header.get("format") != FORMAT_NAME:
        raise RolloutFormatError("format", repr(FORMAT_NAME), repr(header.get("format")))
    if header.get("schema_version") != SCHEMA_VERSION:
        raise RolloutFormatError(
            "schema_version", f"{SCHEMA_VERSION}", repr(header.get("schema_version"))
        )
    missing = sorted(_HEADER_KEYS - set(header))
    if missing:
        raise RolloutFormatError("header", f"keys {sorted(_HEADER_KEYS)}", f"{missing} missing")
    unknown = sorted(set(header) - _HEADER_KEYS - _OPTIONAL_HEADER_KEYS)
    if unknown:
        raise RolloutFormatError("header", "only known keys", f"unknown {unknown}")
    return header


def _convert_tensors(raw: dict[str, Tensor]) -> dict[str, Tensor]:
    """Check names and accepted dtypes; cast to the in-memory dtypes."""
    missing = sorted(set(_TENSORS) - set(raw))
    if missing:
        raise RolloutFormatError("tensors", f"all of {sorted(_TENSORS)}", f"{missing} missing")
    unknown = sorted(set(raw) - set(_TENSORS) - set(_OPTIONAL_TENSORS))
    if unknown:
        raise RolloutFormatError("tensors", "only known names", f"unknown {unknown}")
    out: dict[str, Tensor] = {}
    for name, value in raw.items():
        accepted, target = {**_TENSORS, **_OPTIONAL_TENSORS}[name]
        if value.dtype not in accepted:
            names = ", ".join(str(d).removeprefix("torch.") for d in accepted)
            raise RolloutFormatError(name, f"dtype in ({names})", str(value.dtype))
        not_binary = bool(((value != 0) & (value != 1)).any())
        if target == torch.bool and value.dtype != torch.bool and not_binary:
            raise RolloutFormatError(name, "values 0 or 1", f"{sorted(value.unique().tolist())}")
        out[name] = value.to(target)
    return out


def _sampling(data: Any) -> SamplingParams:
    """``SamplingParams`` from the header, with the header field named on failure."""
    if not isinstance(data, dict):
        raise RolloutFormatError("sampling", "a JSON object", type(data).__name__)
    try:
        return SamplingParams.from_dict(data)
    except (TypeError, ValueError) as err:
        raise RolloutFormatError("sampling", "valid sampling parameters", str(err)) from None


def _int_field(header: dict[str, Any], name: str) -> int:
    """An integer header field (bools are not integers here)."""
    value = header[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise RolloutFormatError(name, "an integer", repr(value))
    return value


def _dict_field(header: dict[str, Any], name: str) -> dict[str, Any]:
    """An optional JSON-object header field (missing or null -> empty)."""
    value = header.get(name) or {}
    if not isinstance(value, dict):
        raise RolloutFormatError(name, "a JSON object", type(value).__name__)
    return value
