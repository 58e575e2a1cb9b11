"""jackpot: RL for language models with decoupled rollouts made unbiased by OBRS.

Importing ``jackpot`` (or ``jackpot.functional``) pulls in torch only; Lightning and
transformers are imported by the trainer modules that need them.
"""

__version__ = "0.1.0"
