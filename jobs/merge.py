"""Merge the effects of several finished runs into one summary.

  python -m jobs.merge RUN1 RUN2 [...] --out MERGED

The runs must share configuration, seed, model and data and differ only in
their repeats (e.g. --first-repeat 0 --repeats 15 and --first-repeat 15
--repeats 15): the merged summary equals that of one run of all repeats.
"""

from __future__ import annotations

import sys
from typing import Sequence

from rnnimp import cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m jobs.merge", description=__doc__,
                                formatter_class=cli.argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="DIR", help="output folders (or URIs) of finished runs")
    parser.add_argument("--out", required=True, help="where to write the merged results")
    args = parser.parse_args(argv)
    from rnnimp.merge import merge_runs

    result = merge_runs(args.runs)
    paths = result.write(args.out)
    print(result.format_summary())
    print()
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
