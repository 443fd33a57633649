"""Shared command-line plumbing for the jobs: one-line errors, exit codes."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn, Sequence

from .errors import RnnimpError

EXIT_BAD_INPUT = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line and exits with code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main``; an RnnimpError becomes one line on stderr and exit code 2."""
    try:
        return main(argv)
    except RnnimpError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
