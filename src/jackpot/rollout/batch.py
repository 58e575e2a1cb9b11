"""``RolloutBatch``: sampled responses with the log-probs of the distribution they came from.

Whatever produced it (the transformers engine, a file written by vLLM, a test), a batch is
the only thing the trainer sees of a rollout. :meth:`RolloutBatch.validate` states every
invariant; the file loader runs it, so a bad file fails with the field that is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import torch
from torch import Tensor

from jackpot.rollout.engine import SamplingParams

__all__ = ["LOGP_TOLERANCE", "RolloutBatch", "RolloutFormatError", "concat_rollouts", "left_pad"]

LOGP_TOLERANCE = 1e-5
"""Log-probs may exceed 0 by this much (rounding in other engines), and the sampled token's
top-k entry may differ from ``logp_inf`` by this much."""


class RolloutFormatError(ValueError):
    """A rollout batch or file breaks the format; names the field, what was expected and found."""

    def __init__(self, field_name: str, expected: str, found: str) -> None:
        """Build the message ``<field>: expected <expected>, found <found>``."""
        super().__init__(f"{field_name}: expected {expected}, found {found}")
        self.field_name = field_name
        self.expected = expected
        self.found = found


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad ragged id lists -> ``(ids, mask)``, each ``(N, max_len)`` int64 (mask 1 = token)."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("every prompt needs at least one token (and there must be one prompt)")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.int64)
    mask = torch.zeros((len(sequences), width), dtype=torch.int64)
    for row, seq in enumerate(sequences):  # once per batch, not per token
        ids[row, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.int64)
        mask[row, width - len(seq) :] = 1
    return ids, mask


@dataclass(frozen=True)
class RolloutBatch:
    """``N`` sampled responses (``N = prompts x group size``) and their ``p_inf`` records.

    Tensor fields are on one device; ids and masks int64, masks 0/1, log-probs float32.
    Positions with ``response_mask == 0`` hold ``pad_token_id`` and log-prob 0.
    """

    prompt_ids: Tensor
    """``(N, P)`` prompt tokens, left-padded with ``pad_token_id``."""
    prompt_mask: Tensor
    """``(N, P)`` 1 on prompt tokens, 0 on left padding."""
    response_ids: Tensor
    """``(N, T)`` sampled tokens, right-padded."""
    response_mask: Tensor
    """``(N, T)`` 1 up to and including the stop token, 0 after."""
    logp_inf: Tensor
    """``(N, T)`` float32 log-prob of each sampled token under the distribution it came from."""
    topk_ids: Tensor
    """``(N, T, k)`` the k most likely tokens of that distribution; the sampled one always."""
    topk_logp: Tensor
    """``(N, T, k)`` float32 their log-probs (``-inf`` for tokens truncated away)."""
    finished: Tensor
    """``(N,)`` bool: True if the response ended with a stop token, False if truncated."""
    group_ids: Tensor
    """``(N,)`` int64 index of the prompt a response answers (GRPO groups)."""
    params: SamplingParams
    """The sampling parameters that define ``p_inf``."""
    pad_token_id: int
    """Id used for padding in ``prompt_ids`` and ``response_ids``."""
    vocab_size: int | None = None
    """Size of the rollout model's output layer, when known; bounds every id."""
    rewards: Tensor | None = None
    """``(N,)`` float32 reward per response, once scored."""
    prompts: list[str] | None = None
    """``N`` prompt texts (metadata, for inspection and reward functions)."""
    answers: list[str] | None = None
    """``N`` reference answers (metadata, for reward functions)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free JSON-ready metadata (model name, task, seed...)."""

    @property
    def num_sequences(self) -> int:
        """``N``."""
        return int(self.response_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        """Number of generated tokens (``response_mask`` ones)."""
        return int(self.response_mask.sum())

    @property
    def response_lengths(self) -> Tensor:
        """``(N,)`` int64 generated tokens per response, stop token included."""
        return self.response_mask.sum(-1)

    def to(self, device: torch.device | str) -> RolloutBatch:
        """Copy of the batch with every tensor on ``device``."""
        return self._map_tensors(lambda t: t.to(device))

    def select(self, indices: Sequence[int] | Tensor) -> RolloutBatch:
        """Rows ``indices`` (any order, repeats allowed); ``group_ids`` are kept, not renumbered."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        picked = self._map_tensors(lambda t: t[index.to(t.device)])
        rows = index.tolist()
        return replace(
            picked,
            prompts=None if self.prompts is None else [self.prompts[i] for i in rows],
            answers=None if self.answers is None else [self.answers[i] for i in rows],
        )

    def with_rewards(self, rewards: Sequence[float] | Tensor) -> RolloutBatch:
        """Copy with ``rewards`` ``(N,)`` attached as float32 on the batch's device."""
        values = torch.as_tensor(rewards, dtype=torch.float32, device=self.response_ids.device)
        if values.shape != (self.num_sequences,):
            raise ValueError(f"rewards must have shape ({self.num_sequences},), got {values.shape}")
        return replace(self, rewards=values)

    def with_texts(
        self, prompts: Sequence[str] | None = None, answers: Sequence[str] | None = None
    ) -> RolloutBatch:
        """Copy with per-response prompt texts and/or reference answers (``N`` each)."""
        for name, texts in (("prompts", prompts), ("answers", answers)):
            if texts is not None and len(texts) != self.num_sequences:
                raise ValueError(f"{name} needs {self.num_sequences} entries, got {len(texts)}")
        return replace(
            self,
            prompts=self.prompts if prompts is None else list(prompts),
            answers=self.answers if answers is None else list(answers),
        )

    def response_lists(self, without_stop: bool = False) -> list[list[int]]:
        """Generated ids per response, padding dropped; the stop token that ended a finished
        response too with ``without_stop`` (the text a reward should see: a tokenizer's
        ``decode`` would spell it out, e.g. ``<eos>``)."""
        lengths = self.response_lengths - (self.finished.long() if without_stop else 0)
        rows = self.response_ids.tolist()
        return [row[:n] for row, n in zip(rows, lengths.tolist(), strict=True)]

    def full_sequences(self) -> tuple[Tensor, Tensor]:
        """``(ids, attention_mask)``, each ``(N, P + T)``: prompt then response, for rescoring.

        Position ``P - 1 + t`` of a forward pass over ``ids`` predicts response token ``t``.
        """
        ids = torch.cat([self.prompt_ids, self.response_ids], dim=1)
        mask = torch.cat([self.prompt_mask, self.response_mask], dim=1)
        return ids, mask

    def validate(self) -> None:
        """Check shapes, dtypes and value invariants; raise :class:`RolloutFormatError` if not."""
        _check_layout(self)
        _check_values(self)

    def _map_tensors(self, fn: Any) -> RolloutBatch:
        """Apply ``fn`` to every tensor field (``rewards`` too when present)."""
        return replace(
            self,
            prompt_ids=fn(self.prompt_ids),
            prompt_mask=fn(self.prompt_mask),
            response_ids=fn(self.response_ids),
            response_mask=fn(self.response_mask),
            logp_inf=fn(self.logp_inf),
            topk_ids=fn(self.topk_ids),
            topk_logp=fn(self.topk_logp),
            finished=fn(self.finished),
            group_ids=fn(self.group_ids),
            rewards=None if self.rewards is None else fn(self.rewards),
        )


def concat_rollouts(batches: Sequence[RolloutBatch]) -> RolloutBatch:
    """One batch from consecutive chunks of a rollout (an engine run chunk by chunk).

    Prompts are left-padded to the longest, responses right-padded to the longest (pad id,
    mask 0, log-prob 0, top-k ids 0 with ``-inf`` log-probs); ``group_ids`` of later chunks are
    shifted past the earlier ones. Every chunk must share sampling parameters, pad id and k.
    """
    first = batches[0]
    for b in batches[1:]:
        if (b.params, b.pad_token_id, b.topk_ids.shape[-1]) != (
            first.params,
            first.pad_token_id,
            first.topk_ids.shape[-1],
        ):
            raise ValueError("rollout chunks differ in sampling parameters, pad id or top-k size")
    p = max(b.prompt_ids.shape[1] for b in batches)
    t = max(b.response_ids.shape[1] for b in batches)
    pad = first.pad_token_id

    def left(x: Tensor, value: float) -> Tensor:  # (n, P') -> (n, P)
        return torch.nn.functional.pad(x, (p - x.shape[1], 0), value=value)

    def right(x: Tensor, value: float) -> Tensor:  # (n, T', ...) -> (n, T, ...)
        widths = [0, 0] * (x.dim() - 2) + [0, t - x.shape[1]]
        return torch.nn.functional.pad(x, widths, value=value)

    offsets, shift = [], 0
    for b in batches:
        offsets.append(shift)
        shift += int(b.group_ids.max()) + 1 if b.group_ids.numel() else 0

    def texts(name: str) -> list[str] | None:
        parts = [getattr(b, name) for b in batches]
        return None if any(x is None for x in parts) else [s for x in parts for s in x]

    return replace(
        first,
        prompt_ids=torch.cat([left(b.prompt_ids, pad) for b in batches]),
        prompt_mask=torch.cat([left(b.prompt_mask, 0) for b in batches]),
        response_ids=torch.cat([right(b.response_ids, pad) for b in batches]),
        response_mask=torch.cat([right(b.response_mask, 0) for b in batches]),
        logp_inf=torch.cat([right(b.logp_inf, 0.0) for b in batches]),
        topk_ids=torch.cat([right(b.topk_ids, 0) for b in batches]),
        topk_logp=torch.cat([right(b.topk_logp, -math.inf) for b in batches]),
        finished=torch.cat([b.finished for b in batches]),
        group_ids=torch.cat([b.group_ids + off for b, off in zip(batches, offsets, strict=True)]),
        rewards=None
        if any(b.rewards is None for b in batches)
        else torch.cat([cast(Tensor, b.rewards) for b in batches]),
        prompts=texts("prompts"),
        answers=texts("answers"),
    )


def _expect_tensor(name: str, value: Tensor, shape: tuple[int | str, ...], dtype: Any) -> None:
    """Raise unless ``value`` has ``dtype`` and ``shape`` (a str entry matches any size)."""
    if value.dtype != dtype:
        raise RolloutFormatError(name, f"dtype {dtype}", f"{value.dtype}")
    ok = value.dim() == len(shape) and all(
        isinstance(want, str) or want == got for want, got in zip(shape, value.shape, strict=False)
    )
    if not ok:
        want_text = "(" + ", ".join(str(s) for s in shape) + ")"
        raise RolloutFormatError(name, f"shape {want_text}", f"{tuple(value.shape)}")


def _check_layout(batch: RolloutBatch) -> None:
    """Dtypes and mutually consistent shapes ``N``, ``P``, ``T``, ``k``."""
    if batch.response_ids.dim() != 2:
        raise RolloutFormatError(
            "response_ids", "shape (N, T)", f"{tuple(batch.response_ids.shape)}"
        )
    n, t = batch.response_ids.shape
    if batch.topk_ids.dim() != 3 or batch.topk_ids.shape[-1] < 1:
        raise RolloutFormatError(
            "topk_ids", f"shape ({n}, {t}, k) with k >= 1", f"{tuple(batch.topk_ids.shape)}"
        )
    k = batch.topk_ids.shape[-1]
    p = batch.prompt_ids.shape[-1] if batch.prompt_ids.dim() == 2 else "P"
    _expect_tensor("response_ids", batch.response_ids, (n, t), torch.int64)
    _expect_tensor("prompt_ids", batch.prompt_ids, (n, "P"), torch.int64)
    _expect_tensor("prompt_mask", batch.prompt_mask, (n, p), torch.int64)
    _expect_tensor("response_mask", batch.response_mask, (n, t), torch.int64)
    _expect_tensor("logp_inf", batch.logp_inf, (n, t), torch.float32)
    _expect_tensor("topk_ids", batch.topk_ids, (n, t, k), torch.int64)
    _expect_tensor("topk_logp", batch.topk_logp, (n, t, k), torch.float32)
    _expect_tensor("finished", batch.finished, (n,), torch.bool)
    _expect_tensor("group_ids", batch.group_ids, (n,), torch.int64)
    if batch.rewards is not None:
        _expect_tensor("rewards", batch.rewards, (n,), torch.float32)
    for name, texts in (("prompts", batch.prompts), ("answers", batch.answers)):
        if texts is not None and (len(texts) != n or not all(isinstance(s, str) for s in texts)):
            raise RolloutFormatError(name, f"a list of {n} strings", f"{_describe_list(texts)}")


def _check_values(batch: RolloutBatch) -> None:
    """Masks 0/1 and contiguous, ids in range, log-probs finite where used and ``<= 0``."""
    _check_mask("prompt_mask", batch.prompt_mask, left_padded=True)
    _check_mask("response_mask", batch.response_mask, left_padded=False)
    if bool((batch.prompt_mask.sum(-1) == 0).any()):
        raise RolloutFormatError("prompt_mask", "at least one prompt token per row", "empty rows")
    vocab = batch.vocab_size
    for name, ids in (
        ("prompt_ids", batch.prompt_ids),
        ("response_ids", batch.response_ids),
        ("topk_ids", batch.topk_ids),
    ):
        _check_ids(name, ids, vocab)
    used = batch.response_mask.bool()
    _check_logp("logp_inf", batch.logp_inf, finite_where=used)
    _check_logp("topk_logp", batch.topk_logp, finite_where=None)
    # The sampled token's entry must be in the top-k record, with the same log-prob.
    hit = batch.topk_ids == batch.response_ids.unsqueeze(-1)  # (N, T, k)
    if bool((used & ~hit.any(-1)).any()):
        raise RolloutFormatError(
            "topk_ids", "the sampled token among the top-k ids at every response position", "a miss"
        )
    entry = torch.where(hit, batch.topk_logp, torch.zeros_like(batch.topk_logp)).sum(-1)
    gap = torch.where(used, (entry / hit.sum(-1).clamp(min=1) - batch.logp_inf).abs(), 0.0)
    if gap.numel() and float(gap.max()) > LOGP_TOLERANCE:
        raise RolloutFormatError(
            "topk_logp",
            f"the sampled token's entry equal to logp_inf (within {LOGP_TOLERANCE})",
            f"a difference of {float(gap.max()):.3g}",
        )
    if batch.group_ids.numel() and int(batch.group_ids.min()) < 0:
        raise RolloutFormatError("group_ids", "values >= 0", f"min {int(batch.group_ids.min())}")
    if batch.rewards is not None and not bool(torch.isfinite(batch.rewards).all()):
        raise RolloutFormatError("rewards", "finite values", "NaN or inf")


def _check_mask(name: str, mask: Tensor, *, left_padded: bool) -> None:
    """0/1 values; zeros only on the left (prompts) or only on the right (responses)."""
    if bool(((mask != 0) & (mask != 1)).any()):
        raise RolloutFormatError(name, "values 0 or 1", f"values {sorted(mask.unique().tolist())}")
    steps = mask[..., 1:] - mask[..., :-1]
    if bool((steps < 0).any() if left_padded else (steps > 0).any()):
        side = "0s then 1s (left padding)" if left_padded else "1s then 0s (right padding)"
        raise RolloutFormatError(name, f"each row {side}", "a gap inside a row")


def _check_ids(name: str, ids: Tensor, vocab_size: int | None) -> None:
    """Ids are ``>= 0`` and, when the vocabulary size is known, ``< vocab_size``."""
    if ids.numel() == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (vocab_size is not None and high >= vocab_size):
        bound = "[0, inf)" if vocab_size is None else f"[0, {vocab_size})"
        raise RolloutFormatError(name, f"ids in {bound}", f"range [{low}, {high}]")


def _check_logp(name: str, logp: Tensor, finite_where: Tensor | None) -> None:
    """No NaN, nothing above 0, and no ``-inf`` where ``finite_where`` is True."""
    if bool(torch.isnan(logp).any()):
        raise RolloutFormatError(name, "no NaN", "NaN")
    if logp.numel() and float(logp.max()) > LOGP_TOLERANCE:
        raise RolloutFormatError(name, "log-probs <= 0", f"max {float(logp.max()):.3g}")
    if finite_where is not None and bool((torch.isinf(logp) & finite_where).any()):
        raise RolloutFormatError(name, "finite values where response_mask is 1", "-inf")


def _describe_list(values: object) -> str:
    """Short description of a list-valued metadata field for error messages."""
    if not isinstance(values, list):
        return type(values).__name__
    kinds = sorted({type(v).__name__ for v in values})
    return f"a list of {len(values)} ({', '.join(kinds) or 'empty'})"
