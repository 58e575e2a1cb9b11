"""Padding-free scoring and training through the model's own forward.

A batch of left-padded prompts and right-padded responses is repacked so that the model
computes real tokens only: each sequence's real tokens are laid out contiguously, several
sequences to a row, with ``position_ids`` restarting at 0 for each one. transformers reads
such restarts as packed sequences (block-causal masks for ``sdpa``/``eager``/``flex``, the
varlen path for flash-attention), so no token attends across sequences and the values equal
the padded forward's. Only the hidden states that predict a response token reach the output
layer.

A row's attention is dense over the row, so rows are as wide as keeps the batch's attention
work at the padded batch's (:func:`row_capacity`); models whose attention kernel is varlen
flash-attention take every sequence in one row, the only layout transformers detects as
packed for them.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers.utils.generic import is_flash_attention_requested

__all__ = ["PackedBatch", "pack", "pack_rows", "packed_logits", "packing_refusal", "row_capacity"]


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sequences (by index) per row, best-fit decreasing: each sequence, longest first, goes to
    the fullest row it still fits in (at most ``capacity`` tokens a row; a longer sequence
    gets a row of its own)."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at < len(free):
            room, row = free.pop(at)
        else:
            room, row = max(capacity, lengths[i]), len(rows)
            rows.append([])
        rows[row].append(i)
        bisect.insort(free, (room - lengths[i], row))
    return rows


@dataclass
class PackedBatch:
    """A batch laid out for the model's forward; ``R`` rows of ``C`` slots."""

    input_ids: Tensor
    """``(R, C)``: the real tokens, then filler (token 0) to the row's end."""
    position_ids: Tensor
    """``(R, C)``: each sequence's positions from 0; the filler is a sequence of its own."""
    predicts: Tensor
    """``(K,)``: slots (row-major) whose hidden state predicts a real response token."""
    targets: Tensor
    """``(K,)``: where each prediction goes in the ``(N * T)`` response grid."""


def row_capacity(n: int, width: int, tokens: int, varlen: bool) -> int:
    """Tokens per row for ``n`` sequences of ``tokens`` real tokens padded to ``width``.

    A varlen kernel takes them all in one row. Otherwise a row's attention is dense over the
    row, so the rows are as wide as keeps the batch's attention work (rows x width^2) at that
    of the padded batch (``n x width^2``), and never narrower than the padded batch.
    """
    if varlen:
        return tokens
    return max(width, n * width * width // max(tokens, 1))


def pack(ids: Tensor, mask: Tensor, prompt_len: int, capacity: int) -> PackedBatch:
    """Pack the real tokens of ``ids``, ``mask`` ``(N, P + T)`` (left-padded prompts, then
    right-padded responses) into rows of ``capacity`` slots (:func:`row_capacity`)."""
    n, width = ids.shape
    real = mask.bool()
    lengths = real.sum(-1).tolist()
    capacity = max(capacity, *lengths)
    rows = pack_rows(lengths, capacity)
    first, used = [0] * n, [0] * len(rows)  # each sequence's first slot; tokens per row
    for r, members in enumerate(rows):
        for i in members:
            first[i] = r * capacity + used[r]
            used[r] += lengths[i]
    position = (mask.cumsum(-1) - 1).clamp(min=0)  # (N, P + T): index among real tokens
    slot = torch.tensor(first, device=ids.device)[:, None] + position  # (N, P + T), where real
    flat_ids = ids.new_zeros(len(rows) * capacity).index_copy(0, slot[real], ids[real])
    flat_pos = torch.arange(len(rows) * capacity, device=ids.device) % capacity
    filled = torch.tensor(used, device=ids.device)[:, None]  # the filler counts from 0 after
    tail = (flat_pos.view(len(rows), capacity) - filled).flatten()
    flat_pos = torch.where(tail >= 0, tail, 0).index_copy(0, slot[real], position[real])
    # Column P + t - 1 of the padded batch predicts response token t.
    response_len = width - prompt_len
    t = torch.arange(response_len, device=ids.device)
    live = real[:, prompt_len:]  # (N, T)
    predicts = slot[:, prompt_len - 1 : width - 1][live]
    targets = (torch.arange(n, device=ids.device)[:, None] * response_len + t)[live]
    return PackedBatch(
        input_ids=flat_ids.view(len(rows), capacity),
        position_ids=flat_pos.view(len(rows), capacity),
        predicts=predicts,
        targets=targets,
    )


def packed_logits(model: nn.Module, ids: Tensor, mask: Tensor, prompt_len: int) -> Tensor:
    """Logits ``(N, T, V)`` predicting each response token from the model's forward over the
    packed real tokens (:func:`pack`); zeros at padded response positions.

    The output layer sees only the ``K`` hidden states that predict a response token: a
    forward pre-hook on the model's output embeddings selects them, so the model's own head
    (and whatever its forward applies after it) runs on ``(1, K, H)``.
    """
    m: Any = model
    n, width = ids.shape
    varlen = is_flash_attention_requested(m.config)
    batch = pack(ids, mask, prompt_len, row_capacity(n, width, int(mask.sum()), varlen))

    def select(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden = args[0]
        return (hidden.flatten(0, -2).index_select(0, batch.predicts)[None], *args[1:])

    handle = m.get_output_embeddings().register_forward_pre_hook(select)
    try:
        logits = m(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            use_cache=False,
        ).logits[0]  # (K, V)
    finally:
        handle.remove()
    response_len = width - prompt_len
    out = logits.new_zeros((n * response_len, logits.shape[-1]))
    return out.index_copy(0, batch.targets, logits).view(n, response_len, -1)


def packing_refusal(model: nn.Module) -> str | None:
    """Why the packed forward would not give ``model``'s padded values, or None.

    Asked by a probe, since which models honour packed ``position_ids`` depends on their
    attention code: two short sequences packed into one row must give the logits each gives
    on its own (the model in eval mode, no gradient). Every process of a sharded model runs
    the same probe, so its collectives match.
    """
    m: Any = model
    device = next(model.parameters()).device
    vocab = int(m.get_output_embeddings().weight.shape[0])
    first = torch.arange(1, 5, device=device) % vocab
    second = torch.arange(5, 8, device=device) % vocab
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            apart = [m(input_ids=s[None], use_cache=False).logits[0] for s in (first, second)]
            positions = torch.cat([torch.arange(len(first)), torch.arange(len(second))])
            together = m(
                input_ids=torch.cat([first, second])[None],
                position_ids=positions[None].to(device),
                use_cache=False,
            ).logits[0]
    finally:
        model.train(was_training)
    expected = torch.cat(apart).float()
    # Round-off of the model's dtype (kernels differ between the layouts), far below what
    # attending to another sequence changes.
    scale = max(1.0, float(expected.abs().max()))
    tolerance = max(1e-4, 8 * torch.finfo(together.dtype).eps) * scale
    if (together.float() - expected).abs().max() > tolerance:
        return "its forward lets packed sequences attend to each other"
    return None
