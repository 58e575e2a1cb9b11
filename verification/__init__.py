"""Verification suite of jackpot: exact checks of the spec (shared/docs/jackpot-math.md).

Run with ``pytest verification -p no:cacheprovider``; ``HYPOTHESIS_PROFILE=thorough`` for a
long randomised run (default profile: ``ci``, derandomised).
"""
