"""The GPU acceptance check: one command that checks the whole stack on a GPU machine.

``python -m benchmarks.gpu.check --out DIR`` (or ``nox -s gpu_check``) runs it;
``benchmarks/gpu/check.sh DIR`` installs jackpot first. ``--dry-run`` rehearses every part at
tiny sizes on CPU. It is not part of the benchmark suite (``python -m benchmarks.run``); it
reuses the suite's workers, model builders and report helpers.
"""
