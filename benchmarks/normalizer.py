"""Section 1: time and extra peak memory of the OBRS normaliser ``Z`` on ``B·T x V`` logits.

Each variant runs in fresh subprocesses (:func:`measure`): a warm-up on small inputs first
(the first use of a kernel faults in libtorch pages), then the full inputs are built in place,
then ``ru_maxrss`` is read before and after one call. glibc keeps some freed chunks resident,
so the parent takes the minimum over several subprocess runs.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from benchmarks.common import current_rss_mib, maxrss_mib, median, run_worker, time_call

LAM = 1.0
"""OBRS threshold used for every variant (the cost does not depend on it)."""
LOGIT_SCALE = 2.0
"""Std of the policy logits."""
NOISE_SCALE = 0.5
"""Std of the noise added to the policy logits to get the rollout model's logits."""
WARM_ROWS = 64
"""Rows of the warm-up call (small, so it leaves no large freed chunks behind)."""

VARIANTS: dict[str, str] = {
    "full": "`log_softmax` of both logits + `normalizer` (full B·T·V fp32 copies)",
    "chunked_1024": "`normalizer_from_logits(chunk_size=1024)` (exact)",
    "chunked_256": "`normalizer_from_logits(chunk_size=256)` (exact)",
    "topk_trainer": (
        "`topk_logprobs(p_inf)` + `candidate_set` + `sparse_topk_normalizer` (top-k, trainer path)"
    ),
    "topk_z_only": "`sparse_topk_normalizer` on stored top-k ids/log-probs (B·T x 2k)",
}
"""Variant name -> what it runs."""


def make_logits(rows: int, vocab: int, seed: int) -> tuple[Tensor, Tensor]:
    """Policy logits and rollout logits (policy + noise), built in place: no transient copies."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(rows, vocab, generator=gen).mul_(LOGIT_SCALE)
    inf = torch.randn(rows, vocab, generator=gen).mul_(NOISE_SCALE).add_(target)
    return target, inf


def make_stored_topk(rows: int, vocab: int, k: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Synthetic candidate set as the trainer stores it: ids, log p_target, log p_inf ``(R, 2k)``.

    Half of the p_target top-k repeats p_inf top-k ids (overlapping sets, as for close models);
    p_inf is ``-inf`` (unknown) on the p_target half, as :func:`jackpot.step.candidate_set` does.
    """
    gen = torch.Generator().manual_seed(seed)
    ids_inf = torch.randint(vocab, (rows, k), generator=gen)
    fresh = torch.randint(vocab, (rows, k - k // 2), generator=gen)
    ids = torch.cat([ids_inf, ids_inf[:, : k // 2], fresh], dim=-1)
    logp_inf_k = torch.randn(rows, k, generator=gen).sort(-1, descending=True).values - 5.0
    logp_inf = torch.cat([logp_inf_k, torch.full((rows, k), float("-inf"))], dim=-1)
    logp_target = torch.randn(rows, 2 * k, generator=gen) - 5.0
    return ids, logp_target, logp_inf


def _full(lt: Tensor, li: Tensor, k: int) -> Tensor:
    """Plain path: two full log-softmax copies, then the exact normaliser."""
    from jackpot.functional import normalizer

    return normalizer(torch.log_softmax(lt, -1), torch.log_softmax(li, -1), LAM)


def _chunked(chunk: int) -> Callable[[Tensor, Tensor, int], Tensor]:
    """Exact chunked normaliser with ``chunk`` rows per chunk."""
    from jackpot.functional import normalizer_from_logits

    def fn(lt: Tensor, li: Tensor, k: int) -> Tensor:
        return normalizer_from_logits(lt, li, LAM, chunk_size=chunk)

    return fn


def _topk_trainer(lt: Tensor, li: Tensor, k: int) -> Tensor:
    """Top-k of p_inf (rollout side), the candidate set with p_target, and ``Z_approx``."""
    from jackpot.functional import sparse_topk_normalizer, topk_logprobs
    from jackpot.step import candidate_set

    ids_inf, logp_inf_k = topk_logprobs(li, k)
    ids, logp_inf, logp_target = candidate_set(ids_inf, logp_inf_k, lt, k)
    return sparse_topk_normalizer(ids, logp_target, logp_inf, LAM)


def _prepare(variant: str, rows: int, vocab: int, k: int, seed: int) -> Callable[[], Tensor]:
    """Build the inputs of ``variant`` and return a no-argument call of it."""
    from jackpot.functional import sparse_topk_normalizer

    if variant == "topk_z_only":
        ids, lpt, lpi = make_stored_topk(rows, vocab, k, seed)
        return lambda: sparse_topk_normalizer(ids, lpt, lpi, LAM)
    fns: dict[str, Callable[[Tensor, Tensor, int], Tensor]] = {
        "full": _full,
        "chunked_1024": _chunked(1024),
        "chunked_256": _chunked(256),
        "topk_trainer": _topk_trainer,
    }
    fn = fns[variant]
    lt, li = make_logits(rows, vocab, seed)
    return lambda: fn(lt, li, k)


def measure(variant: str, rows: int, vocab: int, k: int, repeats: int, seed: int = 0) -> dict:
    """Worker: extra peak RSS of one call after a small warm-up, then ``repeats`` timed calls."""
    torch.manual_seed(seed)
    warm = _prepare(variant, WARM_ROWS, vocab, k, seed)
    warm()
    del warm
    gc.collect()
    fn = _prepare(variant, rows, vocab, k, seed)
    gc.collect()
    rss_before, peak_before = current_rss_mib(), maxrss_mib()
    fn()
    extra = maxrss_mib() - peak_before
    times = [time_call(fn) for _ in range(repeats)]
    return {
        "extra_peak_mib": extra,
        "masked_mib": max(peak_before - rss_before, 0.0),
        "times_s": times,
    }


def run(rows: int, vocab: int, k: int, repeats: int, runs: int) -> dict[str, Any]:
    """Parent: every variant in ``runs`` fresh subprocesses; min memory, median time."""
    kwargs = {"rows": rows, "vocab": vocab, "k": k, "repeats": repeats}
    out: list[dict[str, Any]] = []
    for name, desc in VARIANTS.items():
        results = [
            run_worker("normalizer", "measure", {"variant": name, **kwargs, "seed": r})
            for r in range(runs)
        ]
        times = [t for res in results for t in res["times_s"]]
        out.append(
            {
                "name": name,
                "desc": desc,
                "time_s": median(times),
                "times_s": times,
                "extra_peak_mib": min(res["extra_peak_mib"] for res in results),
                "extra_peak_runs_mib": [res["extra_peak_mib"] for res in results],
                "masked_mib": max(res["masked_mib"] for res in results),
            }
        )
    base = out[0]
    for v in out:
        v["time_ratio"] = v["time_s"] / base["time_s"]
        v["mem_ratio"] = (
            v["extra_peak_mib"] / base["extra_peak_mib"] if base["extra_peak_mib"] else None
        )
    return {
        "rows": rows,
        "vocab": vocab,
        "k": k,
        "repeats": repeats,
        "runs": runs,
        "logits_mib": rows * vocab * 4 / 2**20,
        "topk_store_mib": rows * 2 * k * (8 + 4 + 4) / 2**20,
        "variants": out,
    }
