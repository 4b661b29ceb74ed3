"""The ``runner`` command (and ``python -m runner``): stop signals are held before anything
is imported, so one that comes during start-up stops the run cleanly (see runner.signals)."""

import sys

from runner import signals


def main() -> int:
    signals.hold()
    from runner.cli import main as cli_main  # imports take 0.1-0.3 s

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
