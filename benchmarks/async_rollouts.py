"""Asynchronous rollouts: whole-process RL step periods of ``rollout.max_staleness`` k = 0, 1, 2.

``python -m benchmarks.async_rollouts [--out DIR] [--rounds R] [--quick]``

Both modes at rollout-heavy sizes (the end-to-end sizes of ``benchmarks/e2e.py``: a 512 x 6
policy, a 128 x 2 rollout model, random-init models whose responses run long, 8 prompts x 4,
64 new tokens): decoupled (the rollout model rolls out and trains; top-k OBRS, since the exact
normaliser needs the full p_inf, which a worker sampling from older weights does not give) and
on-policy (the policy rolls out; TIS corrects the lag). On the 2 cores of the development
machine the synchronous run (k = 0) uses 2 torch threads and the asynchronous runs split them:
1 for the trainer, 1 for the rollout worker. The synchronous run on 1 thread (the trainer's
share) is measured too: the async runs against it show what the overlap itself gains.

Periods come from whole processes as in ``benchmarks/trl_compare.py``: ``(wall of an N1-step
run - wall of an N0-step run) / (N1 - N0)``, every variant of both modes interleaved within a
round (the order reversed every other round), after one warm-up run of each; the throughput
ratio against k = 0 is paired per round. Beside it, the in-run period (median of the long
run's own ``perf/period_s``), generated tokens per step, and what the trainer and the worker
waited for each other (``perf/rollout_wait_s``, ``async/worker_wait_s``). The parent runs
no model: every figure comes from ``python -m jackpot.fit`` subprocesses.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, machine_info
from benchmarks.e2e import COMMON, GROUP_SIZE, size_overrides
from benchmarks.trl_compare import (
    _fit,
    inrun_period,
    interleaved_rounds,
    jackpot_step_periods,
    jackpot_tokens_per_step,
    paired_summary,
    timed,
)

MODES: dict[str, list[str]] = {
    "decoupled": ["algo.mode=decoupled", "algo.train_rollout=true", "sampler.topk=8"],
    "on_policy": ["algo.mode=on_policy", "sampler.name=tis"],
}
"""Mode -> overrides of ``configs/default.yaml`` (the same sampler at every k)."""

VARIANTS: dict[str, tuple[int, int, int | None]] = {
    "sync_2t": (0, 2, None),
    "sync_1t": (0, 1, None),
    "k1": (1, 1, 1),
    "k2": (2, 1, 1),
}
"""Variant -> (``rollout.max_staleness``, trainer threads, worker threads)."""

BASELINE = "sync_2t"
"""The variant every ratio is taken against: synchronous, both cores."""

FULL: dict[str, Any] = {
    "policy": (512, 6, 8),
    "rollout": (128, 2, 4),
    "max_new_tokens": 64,
    "prompts_per_step": 8,
    "n0": 2,
    "n1": 7,
    "rounds": 3,
}
"""The measured sizes: the end-to-end section's models, longer responses."""

QUICK: dict[str, Any] = {
    "policy": (64, 2, 4),
    "rollout": (32, 1, 4),
    "max_new_tokens": 8,
    "prompts_per_step": 4,
    "n0": 1,
    "n1": 3,
    "rounds": 1,
}
"""Smoke sizes (``--quick``): checks the plumbing, not the speed."""


def variant_overrides(variant: str) -> list[str]:
    """``rollout.max_staleness`` and the thread split of a variant."""
    k, trainer, worker = VARIANTS[variant]
    out = [f"rollout.max_staleness={k}", f"trainer.num_threads={trainer}"]
    return out + ([] if worker is None else [f"rollout.num_threads={worker}"])


def _median_metric(run_dir: Path, key: str) -> float | None:
    """Median of ``key`` over a run's steps after the first (None when never logged)."""
    with open(run_dir / "metrics.csv", newline="") as handle:
        values = [float(r[key]) for r in csv.DictReader(handle) if r.get(key)][1:]
    return statistics.median(values) if values else None


def run(
    policy: tuple[int, int, int],
    rollout: tuple[int, int, int],
    max_new_tokens: int,
    prompts_per_step: int,
    n0: int,
    n1: int,
    rounds: int,
    work: Path | None = None,
) -> dict[str, Any]:
    """Interleaved rounds of every (mode, variant); per-mode paired ratios against k = 0."""
    base = [*COMMON, *size_overrides(policy, rollout, max_new_tokens, prompts_per_step)]
    rows = prompts_per_step * GROUP_SIZE
    work = Path(tempfile.mkdtemp(prefix="jackpot-async-")) if work is None else work
    names = [f"{mode}:{variant}" for mode in MODES for variant in VARIANTS]

    def out_dir(name: str, steps: int, tag: str) -> Path:
        return work / "runs" / f"{name.replace(':', '-')}-{tag}-{steps}"

    def one(name: str, steps: int, tag: str) -> dict[str, float]:
        mode, variant = name.split(":")
        out = out_dir(name, steps, tag)
        shutil.rmtree(out, ignore_errors=True)
        res = timed([*_fit(out, steps), *base, *MODES[mode], *variant_overrides(variant)])
        res["tokens_per_step"] = jackpot_tokens_per_step(out, rows)
        res["inrun_period_s"] = inrun_period(jackpot_step_periods(out))
        print(f"[async] {name:18s} {steps:2d} steps: {res['wall_s']:6.1f} s wall, "
              f"load {res['load']:.1f}", flush=True)  # fmt: skip
        return res

    start_load = os.getloadavg()
    results = interleaved_rounds(names, one, n0, n1, rounds)
    for r, per_name in enumerate(results):  # the waits, read back from each long run
        for name, figures in per_name.items():
            long_run = out_dir(name, n1, f"r{r}")
            for key in ("perf/rollout_wait_s", "async/worker_wait_s"):
                figures[key] = _median_metric(long_run, key)
    modes: dict[str, Any] = {}
    for mode in MODES:
        per_mode = [{v: r[f"{mode}:{v}"] for v in VARIANTS} for r in results]
        modes[mode] = {v: paired_summary(per_mode, v, BASELINE) for v in VARIANTS if v != BASELINE}
        modes[mode]["vs_sync_1t"] = {
            v: paired_summary(per_mode, v, "sync_1t")["period_ratio"] for v in ("k1", "k2")
        }
    return {
        "sizes": {
            "policy": list(policy),
            "rollout": list(rollout),
            "max_new_tokens": max_new_tokens,
            "prompts_per_step": prompts_per_step,
            "rows": rows,
        },
        "n0": n0,
        "n1": n1,
        "rounds": rounds,
        "overrides": base,
        "modes_overrides": MODES,
        "variants": {v: list(t) for v, t in VARIANTS.items()},
        "loadavg": [round(start_load[0], 2), round(os.getloadavg()[0], 2)],
        "modes": modes,
    }


def _stat(stat: dict[str, float], digits: int = 2) -> str:
    """``median (min-max)``."""
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"


def _wait(values: list[float | None]) -> str:
    """Median of the per-round medians of a wait, or a dash for a synchronous run."""
    kept = [v for v in values if v is not None]
    return f"{statistics.median(kept):.2f}" if kept else "-"


def render(res: dict[str, Any]) -> str:
    """The Markdown report: one table per mode."""
    m, s = res["machine"], res["sizes"]
    lines = [
        "# Asynchronous rollouts: step periods of rollout.max_staleness = 0, 1, 2",
        "",
        f"`{res['command']}` on {m['date']}: {m['cores']} cores, torch {m['torch']}; load "
        f"average {res['loadavg'][0]} at the start, {res['loadavg'][1]} at the end. Policy "
        f"{s['policy'][0]} x {s['policy'][1]}, rollout model {s['rollout'][0]} x "
        f"{s['rollout'][1]} (random init), {s['prompts_per_step']} prompts x {GROUP_SIZE}, "
        f"up to {s['max_new_tokens']} new tokens. Period = (wall of a {res['n1']}-step run - "
        f"wall of a {res['n0']}-step run) / {res['n1'] - res['n0']}, whole processes, every "
        f"variant of both modes interleaved in each of {res['rounds']} rounds; a throughput "
        "ratio above 1 means faster than the synchronous run on both cores, paired per round. "
        "Threads: `sync_2t` trains and rolls out on 2 torch threads; `sync_1t` on 1; `k1` and "
        "`k2` give the trainer 1 thread and the rollout worker 1.",
        "",
    ]
    for mode, variants in res["modes"].items():
        base = next(iter(variants.values()))[BASELINE]
        lines += [
            f"## {mode} ({' '.join(res['modes_overrides'][mode])})",
            "",
            "| variant | step period (s) | throughput vs sync_2t | tokens/s vs sync_2t | "
            "vs sync_1t | in-run period (s) | tokens/step | trainer wait (s) | worker wait (s) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| {BASELINE} | {_stat(base['period_s'])} | 1 | 1 | | "
            f"{_stat(base['inrun_period_s'])} | {base['tokens_per_step']['median']:.0f} | - | - |",
        ]
        for name, summary in variants.items():
            if name == "vs_sync_1t":
                continue
            me = summary[name]
            rounds = [r[name] for r in summary["rounds"]]
            vs_1t = variants["vs_sync_1t"].get(name)
            lines.append(
                f"| {name} | {_stat(me['period_s'])} | {_stat(summary['period_ratio'])}x | "
                f"{_stat(summary['tokens_per_s_ratio'])}x | "
                f"{'' if vs_1t is None else _stat(vs_1t) + 'x'} | "
                f"{_stat(me['inrun_period_s'])} | {me['tokens_per_step']['median']:.0f} | "
                f"{_wait([r['perf/rollout_wait_s'] for r in rounds])} | "
                f"{_wait([r['async/worker_wait_s'] for r in rounds])} |"
            )
        lines.append("")
    return "\n".join(lines)


def write(res: dict[str, Any], out: Path) -> None:
    """``async_rollouts.json`` (every figure) and ``async_rollouts.md`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "async_rollouts.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "async_rollouts.md").write_text(render(res) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, measure, write the report."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.async_rollouts", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "async")
    p.add_argument("--rounds", type=int, help="rounds of interleaved runs (default 3)")
    args = p.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    if args.rounds:
        sizes["rounds"] = args.rounds
    started = datetime.datetime.now(datetime.timezone.utc)
    res = run(**sizes)
    command = "python -m benchmarks.async_rollouts" + (" --quick" if args.quick else "")
    elapsed = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    write({**res, "machine": machine_info(), "command": command, "elapsed_s": elapsed}, args.out)
    print(f"[async] wrote async_rollouts.json and async_rollouts.md to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
