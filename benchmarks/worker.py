"""Subprocess entry: ``python -m benchmarks.worker MODULE FUNC JSON_KWARGS``.

Each measurement runs in a fresh interpreter so peak memory (``ru_maxrss``) starts clean; the
result is printed as one JSON line after :data:`benchmarks.common.RESULT_MARK`. The
environment variable ``BENCH_THREADS`` (set by ``--threads``) fixes torch's CPU threads.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

from benchmarks.common import RESULT_MARK


def main(argv: list[str]) -> int:
    """Import ``benchmarks.MODULE``, call ``FUNC(**kwargs)`` and print the JSON result."""
    module, func, kwargs = argv[0], argv[1], json.loads(argv[2])
    if os.environ.get("BENCH_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    result = getattr(importlib.import_module(f"benchmarks.{module}"), func)(**kwargs)
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
