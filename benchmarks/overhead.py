"""Section 2: sampler + loss time of ``none``, ``tis``, ``obrs`` against a plain PPO loss pass.

The baseline is what every RL step pays anyway: ``token_logprobs`` of the sampled tokens from
the policy logits (with grad), ``policy_loss`` with ``weights=None``, and ``backward``. A
sampler's cost is ``jackpot.step.run_sampler`` (what the trainer runs, candidate set included)
followed by the same loss pass with the sampler's mask and weights. Variants are interleaved
repeat by repeat so background load hits them alike. One grid point per fresh subprocess.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from benchmarks.common import median, mem_total_gib, run_worker
from benchmarks.normalizer import LOGIT_SCALE, NOISE_SCALE

SEQ_LEN = 512
"""Response length T; B = rows / T."""
TOPK = 20
"""k of the top-k OBRS variant (and of the recorded p_inf top-k)."""
BUDGET = 0.95
"""OBRS acceptance budget."""
LIVE_COPIES = 5
"""Live ``B·T x V`` fp32 tensors at the peak: policy and rollout logits, the logits' gradient
and two temporaries of ``logsumexp``'s backward (used to skip grid points that cannot fit)."""
MEM_FRACTION = 0.8
"""Share of physical memory a grid point may plan to use."""

SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "none": ("none", {}),
    "tis": ("tis", {}),
    "obrs_exact": ("obrs", {"budget": BUDGET}),
    "obrs_topk": ("obrs", {"budget": BUDGET, "topk": TOPK}),
}
"""Variant -> (registered sampler name, parameters)."""


@dataclass
class Inputs:
    """One batch: step tensors, policy logits (a leaf with grad), rollout logits, its top-k."""

    tensors: Any
    logits_new: Tensor
    logits_inf: Tensor
    topk_inf: tuple[Tensor, Tensor]


def needed_gib(rows: int, vocab: int) -> float:
    """Planned peak memory of a grid point in GiB."""
    return LIVE_COPIES * rows * vocab * 4 / 2**30


def fits(rows: int, vocab: int) -> bool:
    """Whether a grid point's planned peak fits in :data:`MEM_FRACTION` of the memory."""
    return needed_gib(rows, vocab) <= MEM_FRACTION * mem_total_gib()


def sample_tokens(logits: Tensor, gen: torch.Generator, chunk: int = 1024) -> Tensor:
    """Tokens drawn from ``softmax(logits)`` row by row, in chunks -> ``(R,)``."""
    pieces = [
        torch.multinomial(torch.softmax(c, -1), 1, generator=gen).squeeze(-1)
        for c in logits.split(chunk)
    ]
    return torch.cat(pieces)


def make_inputs(rows: int, vocab: int, seed: int = 0) -> Inputs:
    """Random policy logits, rollout logits = policy + noise, tokens drawn from p_inf."""
    from jackpot.functional import token_logprobs, topk_logprobs
    from jackpot.step import StepTensors

    gen = torch.Generator().manual_seed(seed)
    b, t = max(rows // SEQ_LEN, 1), min(rows, SEQ_LEN)
    new = torch.randn(b, t, vocab, generator=gen).mul_(LOGIT_SCALE)
    inf = torch.randn(b, t, vocab, generator=gen).mul_(NOISE_SCALE).add_(new)
    ids = sample_tokens(inf.view(-1, vocab), gen).view(b, t)
    with torch.no_grad():
        logp_inf = token_logprobs(inf, ids)
        logp_ref = token_logprobs(new, ids)
    adv = torch.randn(b, 1, generator=gen).expand(b, t).contiguous()
    tensors = StepTensors(
        response_ids=ids,
        response_mask=torch.ones(b, t),
        advantages=adv,
        logp_inf=logp_inf,
        logp_ref=logp_ref,
        logp_w_old=None,
        rewards=adv[:, 0],
    )
    return Inputs(tensors, new.requires_grad_(True), inf, topk_logprobs(inf, TOPK))


def loss_pass(inp: Inputs, sampled: Any | None) -> None:
    """``token_logprobs`` with grad, ``policy_loss`` (weights of ``sampled`` or None), backward."""
    from jackpot.functional import token_logprobs
    from jackpot.losses import policy_loss

    t = inp.tensors
    inp.logits_new.grad = None
    logp_new = token_logprobs(inp.logits_new, t.response_ids)
    mask = t.response_mask if sampled is None else sampled.mask
    norm = t.response_mask if sampled is None else sampled.norm_mask
    weights = None if sampled is None else sampled.weights
    loss, _ = policy_loss(logp_new, t.logp_ref, t.advantages, mask, norm, weights)
    loss.backward()


def sampler_pass(inp: Inputs, sampler: Any, seed: int) -> Any:
    """The trainer's sampler path over the whole batch with p_target = p_ref: reduce p_ref's
    logits to what the sampler needs (candidate sets for top-k), then ``run_sampler``."""
    from jackpot.step import run_sampler, target_scores

    t = inp.tensors
    index = torch.arange(t.response_ids.shape[0])
    gen = torch.Generator().manual_seed(seed)
    topk = "topk" in sampler.needs()
    target = target_scores(
        inp.logits_new.detach(),
        t.response_ids,
        topk_inf=inp.topk_inf if topk else None,
        topk_k=sampler.topk_k() if topk else None,
        keep_logits="logits" in sampler.needs(),
    )
    return run_sampler(sampler, t, index, target, gen, inp.logits_inf)


def _timed(inp: Inputs, sampler: Any | None, seed: int) -> tuple[float, float, Any]:
    """(sampler seconds, sampler + loss seconds, sampler output) of one pass."""
    start = time.perf_counter()
    sampled = None if sampler is None else sampler_pass(inp, sampler, seed)
    mid = time.perf_counter()
    loss_pass(inp, sampled)
    return mid - start, time.perf_counter() - start, sampled


def measure(rows: int, vocab: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    """Worker: baseline and every sampler at one grid point; interleaved repeats."""
    from jackpot.samplers import get_sampler

    inp = make_inputs(rows, vocab, seed)
    samplers: dict[str, Any] = {"baseline": None}
    samplers.update({k: get_sampler(name, **p) for k, (name, p) in SAMPLERS.items()})
    times: dict[str, dict[str, list[float]]] = {k: {"sampler": [], "total": []} for k in samplers}
    stats: dict[str, dict[str, float]] = {}
    for rep in range(repeats + 1):  # repeat 0 is the warm-up
        for name, sampler in samplers.items():
            s, total, out = _timed(inp, sampler, seed + rep)
            if rep > 0:
                times[name]["sampler"].append(s)
                times[name]["total"].append(total)
            elif out is not None:
                stats[name] = {k: float(v) for k, v in out.metrics.items() if _keep(k)}
    return {"times": times, "stats": stats}


def _keep(key: str) -> bool:
    """Metrics worth recording next to the timings (realism of the inputs)."""
    return key in ("obrs/accept_rate", "obrs/z_mean", "obrs/lam", "mismatch/kl_k3", "weights/mean")


def _summary(res: dict[str, Any]) -> dict[str, Any]:
    """Medians and ratios against the baseline of one grid point's worker result."""
    base = median(res["times"]["baseline"]["total"])
    out: dict[str, Any] = {"baseline_s": base, "samplers": []}
    for name, t in res["times"].items():
        if name == "baseline":
            continue
        total, samp = median(t["total"]), median(t["sampler"])
        out["samplers"].append(
            {
                "name": name,
                "sampler_s": samp,
                "total_s": total,
                "ratio": total / base,
                "sampler_over_baseline": samp / base,
                "totals_s": t["total"],
                "stats": res["stats"].get(name, {}),
            }
        )
    return out


def run(vocabs: list[int], rows_list: list[int], repeats: int) -> dict[str, Any]:
    """Parent: every grid point that fits in its own subprocess; the others listed as skipped."""
    grid: list[dict[str, Any]] = []
    for vocab in vocabs:
        for rows in rows_list:
            point: dict[str, Any] = {
                "vocab": vocab,
                "rows": rows,
                "need_gib": needed_gib(rows, vocab),
            }
            if not fits(rows, vocab):
                point["skipped"] = (
                    f"needs ~{needed_gib(rows, vocab):.0f} GiB ({LIVE_COPIES} live B·T x V fp32 "
                    f"tensors of {rows * vocab * 4 / 2**30:.1f} GiB) > {MEM_FRACTION:.0%} of "
                    f"{mem_total_gib():.0f} GiB"
                )
            else:
                res = run_worker(
                    "overhead", "measure", {"rows": rows, "vocab": vocab, "repeats": repeats}
                )
                point.update(_summary(res))
            grid.append(point)
    return {"seq_len": SEQ_LEN, "topk": TOPK, "budget": BUDGET, "repeats": repeats, "grid": grid}
