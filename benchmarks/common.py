"""Shared helpers: timing, peak-memory probes, fresh-subprocess workers, machine facts."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULT_MARK = "@@BENCH_RESULT@@ "
"""Prefix of the one stdout line a worker prints its JSON result on."""

ROOT = Path(__file__).resolve().parent.parent
"""Repository root (the worker subprocesses run from here)."""


def maxrss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """Current resident set size of this process, in MiB (from ``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def time_call(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    """Median of a non-empty list (NaN for an empty one)."""
    return statistics.median(values) if values else float("nan")


def mem_total_gib() -> float:
    """Physical memory of the machine in GiB (``MemTotal`` of ``/proc/meminfo``)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def machine_info() -> dict[str, Any]:
    """Cores, memory, torch version and threads, load average and date of this run."""
    import torch

    return {
        "cores": os.cpu_count(),
        "mem_total_gib": round(mem_total_gib(), 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def run_worker(
    module: str,
    func: str,
    kwargs: dict[str, Any],
    env: dict[str, str] | None = None,
    timeout: float = 1800,
) -> Any:
    """Run ``benchmarks.<module>.<func>(**kwargs)`` in a fresh interpreter; return its result."""
    cmd = [sys.executable, "-m", "benchmarks.worker", module, func, json.dumps(kwargs)]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    tail = (proc.stdout + proc.stderr)[-3000:]
    raise RuntimeError(f"worker {module}.{func}({kwargs}) failed (rc={proc.returncode}):\n{tail}")
