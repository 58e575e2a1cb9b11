"""Benchmarks of jackpot: normaliser memory/time, sampler overhead, end-to-end RL step.

Run ``python -m benchmarks.run`` (or ``nox -s bench``); ``--quick`` is a < 60 s smoke version.
Every figure is a ratio against a baseline measured in the same run; nothing asserts a time.
"""
