"""Section 3: end-to-end RL step time, decoupled (cheap rollout model) vs on-policy.

Each mode trains a few RL steps with :func:`jackpot.fit.run` on ``configs/default.yaml`` plus
the section's overrides, in a fresh subprocess and a temporary run dir; the figures are the
trainer's own per-step metrics from ``metrics.csv`` (``perf/step_s``, ``perf/rollout_share``,
...). Both modes see the same prompts (same seed) and batch shape. The models are random-init
(no warm start): a warm-started model answers in 2-3 tokens, a random one emits EOS with
probability ~1/V per token, so responses run long; the measured mean length is reported.
A stopwatch around the trainer's ``target_scores`` and ``run_sampler`` gives the sampler's
share of a step. The
first step of every run is warm-up and dropped; modes alternate run by run so drifting
background load hits them alike. This module imports nothing heavy, so its summary code can
be unit-tested without torch.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from typing import Any

from benchmarks.common import ROOT, run_worker

CONFIG = ROOT / "configs" / "default.yaml"
"""Base config; the section's overrides go on top."""

COMMON = [
    "warmstart.steps=0",
    "warmstart.policy_steps=0",
    "trainer.eval_every=0",
    "trainer.checkpoint_every=1000",
    "run.plot=false",
]
"""Overrides of every e2e run: random-init models, no evaluation, no plot, one checkpoint."""

MODES: dict[str, list[str]] = {
    "on_policy": [
        "algo.mode=on_policy",
        "sampler.name=none",
        "sampler.budget=null",
        "sampler.c1=null",
        "sampler.p_target=null",
    ],
    "decoupled": ["algo.mode=decoupled"],
}
"""Mode -> overrides. On-policy needs no correction (default.yaml's OBRS keys are cleared);
decoupled keeps default.yaml's OBRS: budget 0.9, exact Z, p_target = ref, c1 = 5."""

MODE_DESC: dict[str, str] = {
    "on_policy": "policy rolls out and trains, sampler `none`",
    "decoupled": "rollout model rolls out, OBRS (budget 0.9, exact Z), both models train",
}
"""Mode -> one-line description for the report."""

KEYS = (
    "perf/step_s",
    "perf/rollout_share",
    "perf/rollout_tokens_per_s",
    "perf/train_tokens_per_s",
    "response/length",
    "response/truncated_frac",
)
"""Per-step metrics read back from ``metrics.csv``."""

GROUP_SIZE = 4
"""Responses per prompt (default.yaml's): a step rolls out ``prompts_per_step * 4`` rows."""

WARMUP_STEPS = 1
"""Leading steps of every run left out of the summary (first calls of every kernel)."""

Model = tuple[int, int, int]
"""(hidden size, layers, attention heads) of a tiny model."""


def size_overrides(
    policy: Model, rollout: Model, max_new_tokens: int, prompts_per_step: int
) -> list[str]:
    """Overrides for both models' sizes, the response length limit and the batch size."""
    out = [
        f"rollout.max_new_tokens={max_new_tokens}",
        f"rollout.prompts_per_step={prompts_per_step}",
        f"rollout.group_size={GROUP_SIZE}",
    ]
    for key, (hidden, layers, heads) in (("policy", policy), ("rollout_model", rollout)):
        out += [f"{key}.hidden_size={hidden}", f"{key}.num_layers={layers}"]
        out.append(f"{key}.num_heads={heads}")
    return out


def _time_sampler_calls(durations: list[float]) -> None:
    """Wrap the trainer's sampler path with a stopwatch: ``target_scores`` (the policy's
    logits reduced to log-probs and candidate sets) and ``run_sampler``."""
    import jackpot.module

    def stopwatch(inner: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            durations.append(time.perf_counter() - start)
            return out

        return timed

    jackpot.module.run_sampler = stopwatch(jackpot.module.run_sampler)
    jackpot.module.target_scores = stopwatch(jackpot.module.target_scores)


def measure(mode: str, overrides: list[str], steps: int) -> dict[str, Any]:
    """Worker: train ``steps`` RL steps of ``mode``; per-step metrics and sampler seconds."""
    from jackpot.config import load_config
    from jackpot.fit import run
    from jackpot.training.csv_logger import read_metrics

    sampler_s: list[float] = []
    _time_sampler_calls(sampler_s)
    with tempfile.TemporaryDirectory(prefix="jackpot-bench-") as tmp:
        extra = [f"run.dir={tmp}", f"trainer.max_steps={steps}"]
        cfg = load_config(CONFIG, [*COMMON, *overrides, *MODES[mode], *extra])
        start = time.perf_counter()
        result = run(cfg)
        wall = time.perf_counter() - start
        rows = read_metrics(result.metrics_csv)
    per_step = {key: [r.get(key, math.nan) for r in rows] for key in KEYS}
    return {"wall_s": wall, "per_step": per_step, "sampler_s": sampler_s}


def _median(values: list[float]) -> float:
    """Median of the finite values (NaN when there are none)."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def summarize_mode(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the kept steps of every run of one mode; rollout/train/sampler split."""
    kept: dict[str, list[float]] = {key: [] for key in KEYS}
    sampler_s: list[float] = []
    for res in runs:
        n_steps = len(res["per_step"]["perf/step_s"])
        calls_per_step = len(res["sampler_s"]) // max(n_steps, 1)  # 1 for p_target = ref
        sampler_s += res["sampler_s"][WARMUP_STEPS * calls_per_step :]
        for key in KEYS:
            kept[key] += res["per_step"][key][WARMUP_STEPS:]
    step_s = kept["perf/step_s"]
    rollout_s = [s * f for s, f in zip(step_s, kept["perf/rollout_share"], strict=True)]
    return {
        "steps_kept": len(step_s),
        "step_s": _median(step_s),
        "step_s_range": [min(step_s, default=math.nan), max(step_s, default=math.nan)],
        "rollout_s": _median(rollout_s),
        "train_s": _median([s - r for s, r in zip(step_s, rollout_s, strict=True)]),
        "rollout_share": _median(kept["perf/rollout_share"]),
        "sampler_share": sum(sampler_s) / sum(step_s) if step_s else math.nan,
        "rollout_tokens_per_s": _median(kept["perf/rollout_tokens_per_s"]),
        "train_tokens_per_s": _median(kept["perf/train_tokens_per_s"]),
        "response_length": _median(kept["response/length"]),
        "truncated_frac": _median(kept["response/truncated_frac"]),
        "step_s_all": step_s,
        "wall_s": [res["wall_s"] for res in runs],
    }


def amdahl(share: float, speedup: float) -> float:
    """Step speed-up if only the rollout part (``share`` of the step) got ``speedup`` x faster."""
    return 1.0 / ((1.0 - share) + share / speedup)


def summarize(per_mode: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per-mode summaries and the ratios against on-policy (the baseline of the section)."""
    modes = {mode: summarize_mode(runs) for mode, runs in per_mode.items()}
    on, dec = modes["on_policy"], modes["decoupled"]
    rollout_speedup = on["rollout_s"] / dec["rollout_s"]
    for m in modes.values():
        m["step_ratio"] = on["step_s"] / m["step_s"]
    return {
        "modes": modes,
        "speedup": on["step_s"] / dec["step_s"],
        "rollout_speedup": rollout_speedup,
        "amdahl_measured_share": amdahl(on["rollout_share"], rollout_speedup),
        "amdahl_share_80": amdahl(0.8, rollout_speedup),
        "obrs_share": dec["sampler_share"],
    }


def run(
    policy: Model,
    rollout: Model,
    max_new_tokens: int,
    prompts_per_step: int,
    steps: int,
    runs: int,
) -> dict[str, Any]:
    """Parent: ``runs`` alternating rounds of both modes, ``steps`` RL steps each."""
    from jackpot.tasks.tokenizer import CharTokenizer

    overrides = size_overrides(policy, rollout, max_new_tokens, prompts_per_step)
    per_mode: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for r in range(runs):
        for mode in list(MODES) if r % 2 == 0 else list(reversed(MODES)):
            kwargs = {"mode": mode, "overrides": overrides, "steps": steps}
            per_mode[mode].append(run_worker("e2e", "measure", kwargs))
    return {
        "policy": list(policy),
        "rollout": list(rollout),
        "max_new_tokens": max_new_tokens,
        "prompts_per_step": prompts_per_step,
        "rows": prompts_per_step * GROUP_SIZE,
        "vocab": CharTokenizer().vocab_size,
        "overrides": [*COMMON, *overrides],
        "modes_overrides": MODES,
        "modes_desc": MODE_DESC,
        "steps": steps,
        "runs": runs,
        "warmup_steps": WARMUP_STEPS,
        **summarize(per_mode),
    }
