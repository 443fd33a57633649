"""Importance of the inputs of your own Keras model on your own series, as a Ray job.

  python -m jobs.importance --model M.keras --data X.npy|X.parquet --out DIR [options]
  python -m jobs.importance --model M.keras --data seq=S.parquet --data static=C.parquet ...

--data is a .npy array (series, time, features) or a long-form Parquet
table (a series id column, a time column, one column per feature), or a
partitioned dataset of such Parquet files: a directory or a pyarrow.fs URI
prefix (s3://bucket/prefix/?endpoint_override=HOST:PORT&scheme=http for
MinIO), every series inside one file; the workers then read it shard by
shard and the driver reads only its metadata (--shard-cache-mib). A model
with several inputs takes --data NAME=PATH once per input, NAME being the
input's name in the model; a static input is a .npy (series, features), a
Parquet table with one row per series (series id column + feature columns),
or a partitioned dataset of such tables (a directory or URI prefix; files
holding disjoint id ranges, one row per id; read by the workers like a
sequence dataset). Parquet series are matched by id across inputs (a
dataset's by count and id range; rows in id order). With a mask value (--mask-value,
or a Keras Masking layer on the input), long-form series may have different
lengths and are padded with it (--padding post|pre); padded steps are never
perturbed. The model is loaded in Keras safe mode; any output shape works
(the effect covers all output values, masked output steps left out).
With --segment-column COL (Parquet), importance is computed per segment (COL
must be constant within each series) with comparisons of consecutive segments.
Attaches to RAY_ADDRESS or starts an embedded local Ray.
"""

from __future__ import annotations

import sys
from typing import Sequence

from rnnimp import cli
from rnnimp.errors import InvalidParameterError

JOB = "importance"
# the API's data parameters, as this job's options
INPUTS = {"X": "--data", "y": "--labels", "segments": "--segment-column"}


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m jobs.importance", description=__doc__,
                                formatter_class=cli.argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", required=True, help="the .keras model, taking (batch, time, features) or several inputs")
    add("--data", required=True, action="append", metavar="[NAME=]PATH",
        help="evaluation data: PATH for a single-input model (.npy (series, time, features) or long-form "
             ".parquet); NAME=PATH once per input of a model with several (static inputs: .npy (series, "
             "features), .parquet with one row per series, or a dataset of such files)")
    add("--labels", default=None, help="labels for --metric loss-increase: .npy (series, ...) or long-form .parquet")
    add("--series-column", default="series", help="series id column of Parquet input (default: %(default)s)")
    add("--time-column", default="time", help="time column of Parquet input (default: %(default)s)")
    cli.add_run_options(parser, JOB, out_default="results/importance")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    execution = cli.execution_from_args(args, JOB)
    from rnnimp.modelio import check_model_path
    from rnnimp.options import check_options, parse_mask_values, prepare

    mask_value = parse_mask_values(args.mask_value)

    options = cli.options_from_args(args, JOB)
    parameter_names = cli.parameter_names(JOB, INPUTS)
    check_options(options, parameter_names)
    check_model_path(args.model, "--model")
    # Ray and the workers start now: they import TensorFlow while this process does.
    workers = cli.start_workers(execution)
    try:
        from rnnimp.modelio import architecture, configure_tensorflow, load_model

        configure_tensorflow(workers.driver_threads)
        model = load_model(args.model, "--model")
        X, labels, names, segments, several = _load_inputs(args, model, mask_value)
        options = cli.options_from_args(args, JOB, feature_names=names, segments=segments)
        request = prepare(model, X, labels, options, parameter_names,
                          statistics=None if workers.local else
                          lambda *args: (workers.ready(), dataset_statistics(*args))[1])
        job = {"name": JOB, "model": args.model, "data": args.data if several else args.data[0],
               "labels": args.labels}
        cli.check_out(execution.out, {"configuration": request.configuration, "job": job}, execution.overwrite)
    except BaseException:
        workers.stop()
        raise
    for name, mask in zip(request.inputs.names, request.inputs.mask_values):
        if mask is not None:
            print(f"rnnimp: input {name!r}: steps whose features all equal {mask:g} are padding and are "
                  "not perturbed", flush=True)
    return cli.execute(execution, request, job, lambda on_built: (model, {"phase": "load_model"}), architecture(model),
                       workers, loaded=True)


def _load_inputs(args, model, mask_value):
    """The data of every model input (X: one array, or {input name: array}), labels, feature names,
    the segment of each series (``--segment-column``, else None), and whether the model has several inputs."""
    from rnnimp import data
    from rnnimp.inputs import masking_values, model_input_names, model_input_shapes

    input_names = model_input_names(model)
    paths = data.parse_data_options(args.data, input_names)
    several = len(input_names) > 1
    if isinstance(mask_value, dict):
        unknown = [name for name in mask_value if name not in input_names]
        if unknown:
            raise InvalidParameterError("--mask-value", f"must name inputs of the model ({', '.join(input_names)})",
                                        unknown[0])
    defaults = masking_values(model)
    segments = None
    if args.segment_column is not None:
        from rnnimp.dataset import names_dataset

        if all(names_dataset(path) for path in paths.values()):
            raise InvalidParameterError("--segment-column", "must name a column of a Parquet --data file read in "
                                        "memory (segments are not read from a dataset directory or prefix)",
                                        args.segment_column)
        holders = [name for name in input_names
                   if not names_dataset(paths[name]) and args.segment_column in data.parquet_columns(paths[name])]
        if not holders:
            raise InvalidParameterError("--segment-column", "must name a column of a Parquet --data file",
                                        args.segment_column)
        segments = data.segment_labels(paths[holders[0]], args.segment_column, series_column=args.series_column)
    loaded, datasets = {}, open_datasets(paths, model, several, args)
    for name, shape in zip(input_names, model_input_shapes(model)):
        if name in datasets:
            continue
        kind = data.SEQUENCE if len(shape) == 2 else data.STATIC
        mask = mask_value.get(name) if isinstance(mask_value, dict) else mask_value
        if mask is None and mask_value is None:
            mask = defaults.get(name)
        loaded[name] = data.load_input(
            paths[name], kind, parameter=f"--data {name}" if several else "--data",
            series_column=args.series_column, time_column=args.time_column,
            mask_value=mask if kind == data.SEQUENCE else None, padding=args.padding,
            drop_columns=() if args.segment_column is None else (args.segment_column,))
    if loaded:
        data.match_series(loaded)
    match_dataset_series(datasets, loaded)
    arrays = {name: datasets[name] if name in datasets else loaded[name].array for name in input_names}
    feature_names = {name: list(datasets[name].feature_names) if name in datasets else loaded[name].feature_names
                     for name in input_names}
    n_features = sum(array.shape[-1] for array in arrays.values())
    names = data.feature_names_from_option(args.feature_names, n_features)
    if names is None:
        if several:
            names = {name: found for name, found in feature_names.items() if found} or None
        else:
            names = feature_names[input_names[0]]
    X = arrays if several else arrays[input_names[0]]
    labels = None
    if args.labels is not None:
        first = arrays[input_names[0]]
        labels = data.load_labels(args.labels, first.n_series if input_names[0] in datasets else len(first),
                                  series_column=args.series_column, time_column=args.time_column)
    return X, labels, names, segments, several


def dataset_statistics(inputs, mask_values, shards):
    """Per-feature statistics of dataset inputs: one pass on the Ray workers (the driver reads no rows).

    Needs the job's Ray connection: the job waits for its background start first.
    """
    from rnnimp import distributed

    try:
        return distributed.dataset_moments(inputs, mask_values, shards)
    except Exception as error:  # a worker refused the data (a repeated id...): one line, as the driver would
        cause = getattr(error, "cause", None)  # ray.exceptions.RayTaskError
        if isinstance(cause, InvalidParameterError):
            raise InvalidParameterError(cause.parameter, cause.rule, cause.value) from None
        raise


def open_datasets(paths: dict, model, several: bool, args) -> dict:
    """{input name: DatasetPlan} of the --data paths that are directories or URI prefixes (metadata only).

    A sequence input's dataset is in the long form; a static input's holds one
    row per series (series id column + feature columns).
    """
    from rnnimp.dataset import DatasetPlan, names_dataset
    from rnnimp.inputs import model_input_shapes

    plans = {}
    for (name, path), shape in zip(paths.items(), model_input_shapes(model)):
        if not names_dataset(path):
            continue
        plans[name] = DatasetPlan.open(path, parameter=f"--data {name}" if several else "--data",
                                       series_column=args.series_column, time_column=args.time_column,
                                       static=len(shape) == 1)
    return plans


def match_dataset_series(datasets: dict, loaded: dict) -> None:
    """Refuse Parquet inputs read in memory whose series ids differ from a dataset input's (by range and count).

    Dataset series are ordered by id, as the in-memory reader orders them, so equal id sets line up.
    """
    if not datasets:
        return
    name, plan = next(iter(datasets.items()))
    ends = (plan.files[0].min_id, plan.files[-1].max_id)
    for other, item in loaded.items():
        if item.series_ids is None:
            continue
        ids = item.series_ids.to_pylist()
        if len(ids) != plan.n_series or (ids[0], ids[-1]) != ends:
            raise InvalidParameterError(
                f"--data {other}", f"must hold the series of input {name!r} ({plan.n_series} series, ids "
                f"{ends[0]!r}..{ends[1]!r})", f"{len(ids)} series, ids {ids[0]!r}..{ids[-1]!r}")


if __name__ == "__main__":
    cli.exit_process(cli.run(main))
