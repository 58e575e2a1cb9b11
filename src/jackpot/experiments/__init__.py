"""Experiments built on the trainer: ``python -m jackpot.experiments.compare`` (methods x seeds)."""
