"""``python -m jackpot``: the ``jackpot`` command (fit, rollout, compare) without the script."""

import sys

from jackpot.cli import main

if __name__ == "__main__":
    sys.exit(main())
