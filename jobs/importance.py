"""Importance of the inputs of your own Keras model on your own series, as a Ray job.

  python -m jobs.importance --model M.keras --data X.npy|X.parquet --out DIR [options]

--data is a .npy array (series, time, features) or a long-form Parquet
table (a series id column, a time column, one column per feature). The model
is loaded in Keras safe mode; any output shape works (the effect covers all
output values). Attaches to RAY_ADDRESS or starts an embedded local Ray.
"""

from __future__ import annotations

import sys
from typing import Sequence

from rnnimp import cli

JOB = "importance"
INPUTS = {"X": "--data", "y": "--labels"}  # the API's data parameters, as this job's options


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m jobs.importance", description=__doc__,
                                formatter_class=cli.argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", required=True, help="the .keras model, taking (batch, time, features)")
    add("--data", required=True, help="evaluation series: .npy (series, time, features) or long-form .parquet")
    add("--labels", default=None, help="labels for --metric loss-increase: .npy (series, ...) or long-form .parquet")
    add("--series-column", default="series", help="series id column of Parquet input (default: %(default)s)")
    add("--time-column", default="time", help="time column of Parquet input (default: %(default)s)")
    cli.add_run_options(parser, JOB, out_default="results/importance")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    execution = cli.execution_from_args(args, JOB)
    from rnnimp import data

    sample, names = data.load_series(args.data, series_column=args.series_column, time_column=args.time_column)
    names = data.feature_names_from_option(args.feature_names, sample.shape[2]) or names
    labels = None
    if args.labels is not None:
        labels = data.load_labels(args.labels, sample.shape[0], series_column=args.series_column,
                                  time_column=args.time_column)

    from rnnimp.modelio import check_model_path
    from rnnimp.options import check_options, prepare

    options = cli.options_from_args(args, JOB, feature_names=names)
    parameter_names = cli.parameter_names(JOB, INPUTS)
    check_options(options, parameter_names)
    check_model_path(args.model, "--model")
    # Ray and the workers start now: they import TensorFlow while this process does.
    workers = cli.start_workers(execution)
    try:
        from rnnimp.modelio import architecture, configure_tensorflow, load_model

        configure_tensorflow(None)
        model = load_model(args.model, "--model")
        request = prepare(model, sample, labels, options, parameter_names)
        job = {"name": JOB, "model": args.model, "data": args.data, "labels": args.labels}
        cli.check_out(execution.out, {"configuration": request.configuration, "job": job}, execution.overwrite)
    except BaseException:
        workers.stop()
        raise
    return cli.execute(execution, request, job, lambda: (model, {"phase": "load_model"}), architecture(model),
                       workers)


if __name__ == "__main__":
    sys.exit(cli.run(main))
