"""Print the summary of a finished run.

Reads DIR/summary.parquet (DIR: a local folder or a pyarrow.fs URI such as
s3://bucket/run) and prints the run's configuration (seed, repeats, noise
scale, confidence) and its features by rank with their intervals.
"""

from __future__ import annotations

import sys
from typing import Sequence

from rnnimp import cli, report


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(
        prog="python -m jobs.show", description=__doc__, formatter_class=cli.argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", metavar="DIR", help="folder or pyarrow.fs URI of a finished run")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    table, metadata = report.read_run(args.run, parameter="DIR")
    print(f"run: {args.run}")
    print(report.format_run(table, metadata))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
