"""Verification suite of jackpot: exact checks of the math in ``docs/math.md``.

Fact numbers in the test modules (``test_fact1_unbiasedness.py`` ...) are those of
``docs/math.md``, section 3, which also lists which test proves what.
Run with ``pytest verification -p no:cacheprovider``; ``HYPOTHESIS_PROFILE=thorough`` for a
long randomised run (default profile: ``ci``, derandomised).
"""
