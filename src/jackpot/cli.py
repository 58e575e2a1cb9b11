"""The ``jackpot`` command (also ``python -m jackpot``): ``fit``, ``rollout`` and ``compare``."""

from __future__ import annotations

import sys

USAGE = (
    "usage: jackpot {fit,rollout,compare} ...\n"
    "  fit      train a run (python -m jackpot.fit)\n"
    "  rollout  generate or inspect rollout files (python -m jackpot.rollout)\n"
    "  compare  run every method for several seeds (python -m jackpot.experiments.compare)\n"
    "Each command takes --help."
)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a sub-command; exit code 2 for an unknown one."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "fit":
        from jackpot.fit import main as fit_main

        return fit_main(rest, prog="jackpot fit")
    if command == "rollout":
        from jackpot.rollout.__main__ import main as rollout_main

        return int(rollout_main(rest, prog="jackpot rollout") or 0)
    if command == "compare":
        from jackpot.experiments.compare import main as compare_main

        return int(compare_main(rest) or 0)
    print(f"jackpot: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
