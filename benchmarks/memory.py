"""Section 4: peak memory of real RL steps at Qwen's vocabulary (151,936) as the batch grows.

``python -m benchmarks.memory [--quick] [--old-src DIR] [--out DIR]`` (also a section of
``python -m benchmarks.run``). Random-init Qwen2-style policy and rollout model with a
152k-entry tokenizer and a JSONL task are built locally (:mod:`benchmarks.assets`); each batch
size N = ``prompts_per_step x group_size`` then trains decoupled RL steps (one by default) with
the top-k OBRS sampler and a trained rollout model through ``python -m jackpot.fit`` in its
own process. The figures are that process's peak resident set size (``ru_maxrss`` from
``wait4``) and the trainer's own ``perf/step_s``. ``--old-src`` also runs the ``src/`` folder
of another checkout (e.g. a ``git worktree`` of the trainer before streaming steps) side by
side; ``--no-new`` measures only that, and ``--old-from`` shows such an earlier result beside a
later run's new path. Runs are sequential and hold a lock file, so two measurements never
share the machine's memory; a size whose extrapolated peak would not fit in the memory
available at that moment is skipped and reported as such.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import fcntl
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, run_worker

GROUP_SIZE = 8
"""Responses per prompt: N = prompts_per_step x 8."""

SAMPLER = [
    "sampler.name=obrs",
    "sampler.topk=8",
    "sampler.budget=0.9",
    "sampler.p_target=ref",
    "sampler.c1=5.0",
    "rollout.logprobs_k=8",
]
"""Top-k OBRS: the candidate set is the top-8 of p_inf and of p_target, budget 90 %."""

COMMON = [
    "algo.mode=decoupled",
    "algo.train_rollout=true",
    "algo.minibatches=2",
    "algo.ppo_epochs=1",
    f"rollout.group_size={GROUP_SIZE}",
    "trainer.eval_every=0",
    "trainer.checkpoint_every=1000",
    "run.plot=false",
]
"""Every run: decoupled, both models trained, 2 minibatches, no evaluation, no plot."""

WARMUP_STEPS = 1
"""Leading RL steps left out of the step time (first calls of every kernel)."""

MARGIN_MIB = 3072.0
"""Memory left free for the machine's other users when deciding whether a size fits."""

GOAL_RATIO = 1.5
"""Peak RSS at the largest N may be at most this many times the peak at the smallest N."""

LOCK = Path(tempfile.gettempdir()) / "jackpot-bench-memory.lock"
"""Held while a run is measured: one measurement at a time on this machine."""


def run_overrides(
    assets_overrides: list[str], n: int, new_tokens: int, steps: int, micro: int | None
) -> list[str]:
    """All ``jackpot.fit`` overrides of one run with N = ``n`` sequences."""
    if n % GROUP_SIZE:
        raise ValueError(f"N={n} must be a multiple of the group size {GROUP_SIZE}")
    out = [*assets_overrides, *COMMON, *SAMPLER]
    out += [
        f"rollout.prompts_per_step={n // GROUP_SIZE}",
        f"rollout.max_new_tokens={new_tokens}",
        f"trainer.max_steps={steps}",
    ]
    if micro is not None:
        out.append(f"trainer.micro_batch_size={micro}")
    if os.environ.get("BENCH_THREADS"):
        out.append(f"trainer.num_threads={os.environ['BENCH_THREADS']}")
    return out


def prepare(root: str, vocab_size: int) -> dict[str, Any]:
    """Worker: build (or reuse) the assets; their fit overrides and the prompt lengths."""
    from benchmarks.assets import AssetSpec, build_assets, fit_overrides
    from jackpot.models import load_tokenizer

    assets = build_assets(Path(root), AssetSpec(vocab_size=vocab_size))
    tokenizer = load_tokenizer(assets.policy)
    with assets.task.open() as handle:
        lengths = [len(tokenizer.encode(json.loads(line)["prompt"])) for line in handle]
    return {
        "overrides": fit_overrides(assets),
        "tokenizer_class": type(tokenizer).__name__,
        "tokenizer_len": len(tokenizer),
        "prompt_tokens": [min(lengths), max(lengths)],
        "spec": {"policy": assets.spec.policy, "rollout": assets.spec.rollout},
    }


def mem_available_mib() -> float:
    """``MemAvailable`` of ``/proc/meminfo`` in MiB: what a new process may still use."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return math.nan


@contextmanager
def machine_lock() -> Iterator[None]:
    """Hold :data:`LOCK` (waiting for another measurement to finish first)."""
    with open(LOCK, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[memory] waiting for {LOCK} (another measurement runs)", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def launch(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[int, float]:
    """Run ``cmd`` to the end; its exit code and its own peak RSS in MiB (``wait4``).

    The child's ``ru_maxrss`` is at least this process's peak at spawn (Linux carries it
    over ``exec``), so the caller checks that its own peak is smaller.
    """
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return proc.returncode, usage.ru_maxrss / 1024


def read_steps(metrics_csv: Path) -> list[dict[str, float]]:
    """Rows of ``metrics.csv`` as floats (the trainer's own per-step metrics)."""
    if not metrics_csv.is_file():
        return []
    with metrics_csv.open(newline="") as handle:
        return [
            {k: float(v) for k, v in row.items() if v not in ("", None)}
            for row in csv.DictReader(handle)
        ]


def measure(
    src: Path, overrides: list[str], n: int, timeout: float, keep_logs: Path | None
) -> dict[str, Any]:
    """One ``python -m jackpot.fit`` run of the code under ``src``: peak RSS and step times."""
    with tempfile.TemporaryDirectory(prefix="jackpot-mem-") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "jackpot.fit", *overrides, f"run.dir={run_dir}"]
        env = {**os.environ, "PYTHONPATH": str(src), "TQDM_DISABLE": "1"}
        log = Path(tmp) / "fit.log"
        own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        rc, peak = launch(cmd, env, log, timeout)
        wall = time.perf_counter() - start
        rows = read_steps(run_dir / "metrics.csv")
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(log, keep_logs / f"fit-N{n}-{src.parent.name}.log")
        if rc != 0:
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"jackpot.fit at N={n} ({src}) failed (rc={rc}):\n{tail}")
    step_s = [r["perf/step_s"] for r in rows if "perf/step_s" in r]
    kept = step_s[WARMUP_STEPS:] or step_s
    length = [r["response/length"] for r in rows if "response/length" in r]
    return {
        "peak_rss_mib": peak,
        "parent_peak_mib": own_peak,
        "step_s": statistics.median(kept) if kept else math.nan,
        "step_s_all": step_s,
        "response_length": statistics.mean(length) if length else math.nan,
        "wall_s": wall,
    }


def predict_peak(done: list[tuple[int, float]], n: int) -> float:
    """Peak RSS at ``n`` extrapolated from measured ``(N, peak)`` pairs (NaN without any).

    Linear through the last two; from one point, proportional to N (an over-estimate, since
    part of the peak does not grow with N).
    """
    if not done:
        return math.nan
    if len(done) == 1:
        n0, p0 = done[0]
        return p0 * n / n0
    (n0, p0), (n1, p1) = done[-2], done[-1]
    return p1 + (p1 - p0) * (n - n1) / (n1 - n0)


def git_state(src: Path) -> dict[str, Any]:
    """Commit checked out around ``src`` and whether ``src`` has uncommitted changes."""

    def git(*args: str) -> str:
        proc = subprocess.run(
            ["git", "-C", str(src), *args], capture_output=True, text=True, check=False
        )
        return proc.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD") or None,
        "dirty": bool(git("status", "--porcelain", ".")),
    }


def run(
    sizes: list[int],
    new_tokens: int,
    steps: int,
    vocab: int,
    micro_batch_size: int | None,
    old_src: str | None = None,
    new: bool = True,
    new_src: str | None = None,
    assets_dir: str | None = None,
    timeout: float = 3600,
    logs: str | None = None,
    on_point: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Parent: every size, smallest N first, with ``new_src`` (default: this checkout's
    ``src/``) and/or ``old_src``.

    ``on_point`` gets the result so far after every size (to save partial tables).
    """
    root = Path(assets_dir) if assets_dir else ROOT / ".cache" / f"bench-assets-v{vocab}"
    info = run_worker("memory", "prepare", {"root": str(root), "vocab_size": vocab})
    paths: dict[str, tuple[Path, int | None]] = {}
    if new:
        paths["new"] = (Path(new_src or ROOT / "src").resolve(), micro_batch_size)
    if old_src is not None:
        paths["old"] = (Path(old_src).resolve(), None)
    if not paths:
        raise ValueError("nothing to measure: new=False and no old_src")
    head = {
        "sizes": sorted(sizes),
        "new_tokens": new_tokens,
        "steps": steps,
        "warmup_steps": WARMUP_STEPS,
        "vocab": vocab,
        "group_size": GROUP_SIZE,
        "micro_batch_size": micro_batch_size,
        # Recorded relative to the repository: results carry no path of the machine.
        "assets": {**info, "overrides": [o.replace(f"{ROOT}/", "") for o in info["overrides"]]},
        "overrides": [*COMMON, *SAMPLER],
        "code": {name: git_state(src) for name, (src, _) in paths.items()},
    }
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
    with machine_lock():
        for n in sorted(sizes):
            for name, (src, micro) in paths.items():
                done = [(p["n"], p["peak_rss_mib"]) for p in results[name] if "peak_rss_mib" in p]
                overrides = run_overrides(info["overrides"], n, new_tokens, steps, micro)
                point = measure_or_skip(src, overrides, n, predict_peak(done, n), timeout, logs)
                print(f"[memory] {name} N={n}: {_brief(point)}", flush=True)
                results[name].append(point)
                if on_point is not None:
                    on_point({**head, **summarize(results)})
    return {**head, **summarize(results)}


def measure_or_skip(
    src: Path, overrides: list[str], n: int, predicted: float, timeout: float, logs: str | None
) -> dict[str, Any]:
    """Measure one size, or skip it when ``predicted`` (MiB) would not fit in memory now."""
    available = mem_available_mib()
    point: dict[str, Any] = {"n": n, "available_mib": available, "predicted_mib": predicted}
    point["date"] = _now()
    load = os.getloadavg()[0]
    if predicted > available - MARGIN_MIB:
        point["skipped"] = (
            f"its peak extrapolated from the smaller N, {predicted / 1024:.1f} GiB, exceeds "
            f"the {available / 1024:.1f} GiB available then minus a "
            f"{MARGIN_MIB / 1024:.0f} GiB margin"
        )
        return point
    point.update(measure(src, overrides, n, timeout, Path(logs) if logs else None))
    point["loadavg"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    return point


def _brief(point: dict[str, Any]) -> str:
    if "skipped" in point:
        return f"skipped, {point['skipped']}"
    return (
        f"peak {point['peak_rss_mib']:.0f} MiB, step {point['step_s']:.1f} s, "
        f"load {point['loadavg']}"
    )


def light_machine_info() -> dict[str, Any]:
    """Cores, memory, torch version (not imported: this process must stay small) and date."""
    from importlib.metadata import version

    from benchmarks.common import mem_total_gib

    return {
        "cores": os.cpu_count(),
        "mem_total_gib": round(mem_total_gib(), 1),
        "torch": version("torch"),
        "date": _now(),
    }


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def reuse_old(res: dict[str, Any], earlier: dict[str, Any]) -> None:
    """Put the old path's points of an ``earlier`` result (same sizes and settings) into ``res``.

    The old code does not change, so its figures can be measured once, when the machine has
    room, and shown beside later measurements of the new path.
    """
    for key in ("sizes", "new_tokens", "steps", "vocab", "group_size", "overrides"):
        if earlier[key] != res[key]:
            raise ValueError(f"the earlier result has {key}={earlier[key]}, this run {res[key]}")
    res["code"]["old"] = earlier["code"]["old"]
    res["notes"] = earlier.get("notes", [])
    old = {"old": earlier["paths"]["old"]["points"]}
    res["paths"]["old"] = summarize(old)["paths"]["old"]


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per path: each point's ratio to the smallest N; the goal at the largest N (new path)."""
    paths: dict[str, Any] = {}
    for name, points in results.items():
        base = points[0].get("peak_rss_mib", math.nan) if points else math.nan
        for p in points:
            p["ratio"] = p.get("peak_rss_mib", math.nan) / base
        paths[name] = {"points": points}
    new = paths.get("new", {"points": []})["points"]
    ratio = new[-1]["ratio"] if new else math.nan
    target = (
        f"peak RSS at N = {new[-1]['n']} <= {GOAL_RATIO:g}x that at N = {new[0]['n']}"
        if new
        else "no new-path figures"
    )
    goal = {
        "target": target,
        "value": ratio,
        "met": None if not math.isfinite(ratio) else ratio <= GOAL_RATIO,
    }
    return {"paths": paths, "goal": goal}


# ----------------------------------------------------------------------------- report


def _mib(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:,.0f}"


def _ratio(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.2f}x"


def _secs(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.1f}"


def _micro_desc(res: dict[str, Any]) -> str:
    """How the new path's micro-batch size was set."""
    if res["micro_batch_size"] is None:
        return (
            "the default config's automatic size, from `trainer.micro_batch_tokens` and "
            "`trainer.micro_batch_logits_gb`"
        )
    return f"`trainer.micro_batch_size={res['micro_batch_size']}` sequences"


def nxtv_gib(n: int, tokens: int, vocab: int) -> float:
    """Size of one fp32 N x T x V tensor in GiB."""
    return n * tokens * vocab * 4 / 2**30


PATH_DESC = {
    "new": "`new`: the streaming trainer (scoring and updates in micro-batches: {micro}).",
    "old": "`old`: the trainer before streaming steps (a `git worktree` of that commit on its "
    "own `PYTHONPATH`), which keeps the policy's N x T x V logits for the whole step and runs "
    "each minibatch in one pass.",
}
"""What each path is, for the report."""


def _lengths(points: list[dict[str, Any]], limit: int) -> str:
    """Mean response lengths of the measured runs, in words."""
    lengths = [
        p["response_length"] for p in points if math.isfinite(p.get("response_length", math.nan))
    ]
    if not lengths:
        return "response lengths not recorded"
    if min(lengths) == limit:
        return "every response ran to the limit: random models rarely emit EOS"
    return f"mean response length {min(lengths):.1f}-{max(lengths):.1f} tokens"


def _point(res: dict[str, Any], name: str, n: int) -> dict[str, Any] | None:
    """The point of path ``name`` at ``n`` (None when it has not run)."""
    return next((p for p in res["paths"][name]["points"] if p["n"] == n), None)


def _code(state: dict[str, Any]) -> str:
    commit = (state.get("commit") or "?")[:12]
    return f"`{commit}`" + (" + uncommitted changes" if state.get("dirty") else "")


def render(res: dict[str, Any]) -> str:
    """``memory.md``: the peak-RSS table (both paths side by side), step times, the goal."""
    names = list(res["paths"])
    first = res["sizes"][0]
    header = ["N", "one N x T x V fp32 (GiB)"]
    for name in names:
        header += [f"{name}: peak RSS (MiB)", f"{name}: x N={first}", f"{name}: step (s)"]
        header += [f"{name}: load"]
    rows, notes, measured = [], [], []
    for n in res["sizes"]:
        row = [str(n), f"{nxtv_gib(n, res['new_tokens'], res['vocab']):.2f}"]
        for name in names:
            p = _point(res, name, n)
            if p is None:
                row += ["not run", "—", "—", "—"]
            elif "skipped" in p:
                row += ["skipped", "—", "—", "—"]
                notes.append(f"- `{name}` at N = {n} was skipped: {p['skipped']}.")
            else:
                measured.append(p)
                load = "-".join(f"{x:.0f}" for x in p["loadavg"])
                row += [_mib(p["peak_rss_mib"]), _ratio(p["ratio"]), _secs(p["step_s"]), load]
        rows.append(row)
    m, a = res.get("machine", {}), res["assets"]
    goal = res["goal"]
    status = {None: "n/a", True: "**met**", False: "**missed**"}[goal["met"]]
    code = "; ".join(f"`{k}` = {_code(v)}" for k, v in res["code"].items())
    vocab = f"{res['vocab']:,}"
    one_step = res["steps"] == 1
    timing = (
        "the step time is the trainer's `perf/step_s` of that single step (it includes the "
        "first call of every kernel)"
        if one_step
        else f"the step time is the median of the trainer's `perf/step_s` without the first "
        f"{res['warmup_steps']} step(s)"
    )
    lines = [
        f"# Peak memory of an RL step at V = {vocab}",
        "",
        f"`{res.get('command', 'python -m benchmarks.memory')}` on {m.get('date', '?')}: "
        f"{m.get('cores', '?')} cores, {m.get('mem_total_gib', '?')} GiB, torch "
        f"{m.get('torch', '?')}; code: {code}.",
        "",
        f"**Goal**: {goal['target']} with the new path: {_ratio(goal['value'])}, {status}.",
        "",
        *_md_table(header, rows),
        "",
        f"Each cell is one `python -m jackpot.fit` run of {res['steps']} RL step(s) in a fresh "
        "process: its peak resident set size (`ru_maxrss` from `wait4`), and "
        f"{timing}. `load`: the machine's 1-minute load average at the start and end of the "
        "run (other people's jobs share its cores, so step times are only comparable at "
        "similar load; memory is not affected). "
        f"N = prompts x {res['group_size']} sequences, T = {res['new_tokens']} new tokens "
        f"({_lengths(measured, res['new_tokens'])}), decoupled, top-k OBRS (k = 8, budget "
        "0.9, p_target = ref), the rollout model trained (RL + distillation), 2 minibatches. "
        + " ".join(PATH_DESC[name].format(micro=_micro_desc(res)) for name in names)
        + " A size is skipped when the peak extrapolated from the smaller N would not fit in "
        f"the memory available at that moment minus {MARGIN_MIB / 1024:.0f} GiB (the machine "
        "is shared).",
        "",
        f"Models (built locally, `benchmarks/assets.py`): random-init Qwen2-style policy, "
        f"hidden x layers = {a['spec']['policy'][0]} x {a['spec']['policy'][1]}, and rollout "
        f"model, {a['spec']['rollout'][0]} x {a['spec']['rollout'][1]}, tied embeddings, "
        f"fp32, vocabulary {vocab}; a byte-level BPE tokenizer with {a['tokenizer_len']:,} "
        f"entries (it loads as `{a['tokenizer_class']}`); prompts of "
        f"{a['prompt_tokens'][0]}-{a['prompt_tokens'][1]} tokens from a local JSONL task. "
        f"Overrides: `{' '.join(res['overrides'])}`.",
    ]
    notes += [f"- {note}" for note in res.get("notes", [])]
    if notes:
        lines += ["", *notes]
    parent = max(
        (p["parent_peak_mib"] for p in measured if "parent_peak_mib" in p), default=math.nan
    )
    lowest = min((p["peak_rss_mib"] for p in measured), default=math.nan)
    if math.isfinite(parent):
        verdict = "below every figure above" if parent < lowest else "NOT below every figure"
        lines += [
            "",
            f"The measuring process's own peak was {parent:.0f} MiB ({verdict}; a child's "
            "`ru_maxrss` cannot be below its parent's peak at spawn).",
        ]
    return "\n".join(lines) + "\n"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _strict(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None (strict JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def write(res: dict[str, Any], out: Path) -> None:
    """``memory.json`` (every figure) and ``memory.md`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(_strict(res), indent=1) + "\n")
    (out / "memory.md").write_text(render(res))


FULL: dict[str, Any] = {
    "sizes": [32, 64, 128, 256],
    "new_tokens": 32,
    "steps": 1,
    "vocab": 151_936,
    "micro_batch_size": None,
}
"""N = 32-256 sequences x 32 new tokens at Qwen's vocabulary, the default config's automatic
micro-batches (``--micro-batch-size`` fixes one). One RL step per run: every tensor of a step
is allocated in the first one (same shapes after), and at
N = 256 a step takes minutes on a shared 2-core machine."""

QUICK: dict[str, Any] = {
    "sizes": [8, 16],
    "new_tokens": 4,
    "steps": 2,
    "vocab": 4096,
    "micro_batch_size": 4,
}
"""Smoke sizes (``--quick``): checks the plumbing, not the memory."""


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, measure, write ``memory.json`` and ``memory.md`` (after every size)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results", help="output folder")
    p.add_argument("--old-src", help="src/ of another checkout to measure side by side")
    p.add_argument("--new-src", help="src/ of the new path (default: this checkout's)")
    p.add_argument("--no-new", action="store_true", help="measure only --old-src")
    p.add_argument("--old-from", type=Path, help="take the old path from this memory.json")
    p.add_argument("--sizes", type=int, nargs="+", help="N values (default: 32 64 128 256)")
    p.add_argument("--micro-batch-size", type=int, help="trainer.micro_batch_size of the new path")
    p.add_argument("--threads", type=int, help="torch CPU threads of every run")
    p.add_argument("--logs", help="keep every run's fit log in this folder")
    args = p.parse_args(argv)
    if args.threads:
        os.environ["BENCH_THREADS"] = str(args.threads)
    sizes = dict(QUICK if args.quick else FULL)
    if args.sizes:
        sizes["sizes"] = args.sizes
    if args.micro_batch_size:
        sizes["micro_batch_size"] = args.micro_batch_size
    command = "python -m benchmarks.memory " + " ".join(sys.argv[1:] if argv is None else argv)

    def save(res: dict[str, Any]) -> None:
        if args.old_from:
            reuse_old(res, json.loads(args.old_from.read_text()))
        write({**res, "machine": light_machine_info(), "command": command}, args.out)

    res = run(
        **sizes,
        old_src=args.old_src,
        new=not args.no_new,
        new_src=args.new_src,
        logs=args.logs,
        on_point=save,
    )
    save(res)
    print(
        f"[memory] {res['goal']['target']}: {res['goal']['met']} ({_ratio(res['goal']['value'])})"
    )
    print(f"[memory] wrote {args.out / 'memory.json'} and {args.out / 'memory.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
