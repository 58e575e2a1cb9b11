"""``python -m benchmarks.run [--quick] [--out DIR] [--threads N] [--old-src DIR] [--trl]``.

Runs the normaliser, sampler-overhead, end-to-end, memory, asynchronous-rollout and
rollout-decode sections (each measurement in fresh subprocesses), checks the performance
targets, and writes ``bench.json`` (every figure, machine facts) and ``bench.md`` (tables,
ratios against the same run's baselines) to ``--out``, the memory section's ``memory.json`` /
``memory.md`` beside them and the asynchronous-rollout section's ``async_rollouts.json`` /
``async_rollouts.md`` in ``--out``/async (its runs set their own thread counts). ``--trl``
then runs :mod:`benchmarks.trl_compare` (TRL's GRPOTrainer vs ``jackpot.fit``, and the
decoupled step vs on-policy; ``trl`` must be installed, as ``nox -s bench`` does) into
``trl_compare.json`` / ``trl_compare.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import async_rollouts, decode, e2e, memory, normalizer, overhead, trl_compare
from benchmarks.common import ROOT, machine_info
from benchmarks.report import render, targets

FULL: dict[str, dict[str, Any]] = {
    "normalizer": {"rows": 8192, "vocab": 32000, "k": 20, "repeats": 3, "runs": 2},
    "overhead": {"vocabs": [32000, 152064], "rows_list": [4096, 16384], "repeats": 3},
    "e2e": {
        "policy": (512, 6, 8),
        "rollout": (128, 2, 4),
        "max_new_tokens": 48,
        "prompts_per_step": 8,
        "steps": 4,
        "runs": 2,
    },
    "memory": memory.FULL,
    "async": async_rollouts.FULL,
    "decode": {
        "points": [
            {"hidden": 128, "layers": 2, "prompts": 8, "group": 8, "tokens": 16},
            {"hidden": 512, "layers": 6, "prompts": 8, "group": 4, "tokens": 48},
        ],
        "repeats": 15,
    },
}
"""Sizes of the real run: Qwen-like vocabularies, a rollout model ~10x cheaper to sample."""

QUICK: dict[str, dict[str, Any]] = {
    "normalizer": {"rows": 512, "vocab": 4000, "k": 20, "repeats": 2, "runs": 1},
    "overhead": {"vocabs": [4000], "rows_list": [1024], "repeats": 2},
    "e2e": {
        "policy": (64, 2, 4),
        "rollout": (32, 1, 4),
        "max_new_tokens": 8,
        "prompts_per_step": 4,
        "steps": 3,
        "runs": 1,
    },
    "memory": memory.QUICK,
    "async": async_rollouts.QUICK,
    "decode": {
        "points": [{"hidden": 32, "layers": 1, "prompts": 2, "group": 2, "tokens": 4}],
        "repeats": 2,
    },
}
"""Tiny sizes of the smoke run (``--quick``): checks the plumbing, not the speed."""


def run_all(sizes: dict[str, dict[str, Any]], quick: bool) -> dict[str, Any]:
    """Every section at ``sizes``; the result dict that ``bench.json`` holds."""
    start = time.perf_counter()
    results: dict[str, Any] = {"quick": quick, "machine": machine_info(), "sizes": sizes}
    sections = (
        ("normalizer", normalizer),
        ("overhead", overhead),
        ("e2e", e2e),
        ("memory", memory),
        ("async", async_rollouts),
        ("decode", decode),
    )
    for name, section in sections:
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        print(f"[bench] {name} {sizes[name]} ...", flush=True)
        results[name] = section.run(**sizes[name])
        elapsed = time.perf_counter() - t0
        # 1-minute load averages around the section: other jobs on the machine skew times.
        results[name]["loadavg"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        results[name]["elapsed_s"] = elapsed
        print(f"[bench] {name} done in {elapsed:.0f} s", flush=True)
    results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["elapsed_s"] = time.perf_counter() - start
    results["targets"] = targets(results)
    return results


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the sections, write ``bench.json`` and ``bench.md``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of a few minutes")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results", help="output folder")
    p.add_argument("--threads", type=int, help="torch CPU threads of every worker")
    p.add_argument("--old-src", help="memory section: also measure this checkout's src/")
    p.add_argument("--trl", action="store_true", help="also run benchmarks.trl_compare")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        os.environ["BENCH_THREADS"] = str(args.threads)  # read by every worker
        torch.set_num_threads(args.threads)  # so machine_info reports it
    sizes = QUICK if args.quick else FULL
    results = run_all({**sizes, "memory": {**sizes["memory"], "old_src": args.old_src}}, args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "bench.md").write_text(render(results))
    command = "python -m benchmarks.run" + (" --quick" if args.quick else "")
    memory.write({**results["memory"], "machine": results["machine"], "command": command}, args.out)
    extra = {"machine": results["machine"], "command": command}
    async_rollouts.write({**results["async"], **extra}, args.out / "async")
    for t in results["targets"]:
        status = {None: "n/a", True: "met", False: "missed"}[t["met"]]
        print(f"[bench] {t['target']}: {status} ({t['measured']})")
    print(f"[bench] wrote bench.json, bench.md, memory.json, memory.md and async/ to {args.out}")
    if args.trl:
        trl_python = os.environ.get("TRL_PYTHON", sys.executable)
        work = ROOT / "runs" / "trl_compare"
        trl_compare.run(args.out, trl_python, work, args.quick, ["trl", "decoupled"])
        print(f"[bench] wrote trl_compare.json and trl_compare.md to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
