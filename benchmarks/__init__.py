"""Benchmarks of jackpot: normaliser memory/time, sampler overhead, end-to-end RL step, memory
of real RL steps, rollout decoding, and TRL's GRPOTrainer against ``jackpot.fit``.

Run ``python -m benchmarks.run`` (or ``nox -s bench``); ``--quick`` is a < 60 s smoke version.
Every figure is a ratio against a baseline measured in the same run; nothing asserts a time.
The GPU acceptance check, which reuses these modules, lives in :mod:`benchmarks.gpu`.
"""
