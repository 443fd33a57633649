"""Shared command-line plumbing of the jobs: options, checks of --out, the run itself.

Everything a user can get wrong is checked before Ray starts or any model
runs; an error is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable, NoReturn, Sequence

from . import logs, output, validation
from .errors import InvalidParameterError, RnnimpError

EXIT_BAD_INPUT = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line and exits with code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main``; an RnnimpError becomes one line on stderr and its exit code (2: bad input)."""
    try:
        return main(argv)
    except RnnimpError as error:
        print(f"error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def add_run_options(parser: argparse.ArgumentParser, out_default: str) -> None:
    """The options every importance job shares (method, statistics, execution, output)."""
    add = parser.add_argument
    add("--out", default=out_default,
        help="output folder or pyarrow.fs URI, e.g. s3://bucket/run (default: %(default)s)")
    add("--repeats", type=int, default=30,
        help="repeats per feature, >= 2; with --target-halfwidth, the first wave (default: %(default)s)")
    add("--first-repeat", type=int, default=0,
        help="index of the first repeat, to split repeats over several runs merged with jobs.merge (default: %(default)s)")
    add("--perturbation", choices=("noise", "permute", "ablate"), default="noise",
        help="noise: add Gaussian noise; permute: exchange a feature's trajectory between series; "
             "ablate: replace it by --ablate-value (default: %(default)s)")
    add("--noise-scale", type=float, default=0.2,
        help="standard deviation of the added noise, in the feature's units (default: %(default)s)")
    add("--noise-relative", type=float, default=None,
        help="noise standard deviation as a fraction of each feature's standard deviation (overrides --noise-scale)")
    add("--ablate-value", default="mean", help="mean, zero, or a number (default: %(default)s)")
    add("--metric", choices=("rms", "mae", "loss-increase"), default="rms",
        help="rms or mae change of the outputs, or the increase of the loss against --labels (default: %(default)s)")
    add("--loss", choices=("mse", "binary-crossentropy"), default="mse",
        help="loss of --metric loss-increase (default: %(default)s)")
    add("--group", action="append", default=[], metavar="NAME=F1,F2",
        help="perturb these features jointly, reported as one row NAME (repeatable)")
    add("--per-step", action="store_true", help="a features x time-steps map: perturb one step at a time")
    add("--resample", action="store_true",
        help="each repeat also draws a bootstrap resample of the series (intervals include sample choice)")
    add("--seed", type=int, default=0, help="the one seed all randomness derives from (default: %(default)s)")
    add("--confidence", type=float, default=0.95, help="confidence level of the intervals (default: %(default)s)")
    add("--interval", choices=("bca", "percentile", "t"), default="bca",
        help="bootstrap method of the second interval: bca (percentile where BCa is undefined), "
             "percentile, or t only (default: %(default)s)")
    add("--target-halfwidth", type=float, default=None,
        help="adaptive repeats: add waves until every t-interval half-width is at most this")
    add("--relative", action="store_true", help="--target-halfwidth is a fraction of each mean effect")
    add("--max-repeats", type=int, default=None,
        help="adaptive repeats: at most this many per feature (default: 10 x --repeats)")
    add("--wave-repeats", type=int, default=5, help="adaptive repeats: repeats per extra wave (default: %(default)s)")
    add("--num-cpus", type=int, default=None,
        help="CPUs of the embedded local Ray (default: all); ignored when RAY_ADDRESS is set")
    add("--connect-timeout", type=float, default=30.0,
        help="seconds to wait for the cluster in RAY_ADDRESS before giving up (default: %(default)s)")
    add("--eval-batch-size", type=int, default=4096,
        help="series per forward pass on the workers (default: %(default)s)")
    add("--shard-size", type=int, default=65536,
        help="series per unit of work, a multiple of --eval-batch-size (default: %(default)s)")
    add("--overwrite", action="store_true",
        help="discard results or an unfinished run of another configuration in --out")
    add("--quiet", action="store_true", help="no progress bar")
    add("--verbose", action=_VerboseAction, help="also show TensorFlow's, absl's and Ray's own log lines")


class _VerboseAction(argparse.Action):
    """``--verbose``: recorded in the environment at once, before TensorFlow is imported (workers inherit it)."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        logs.set_verbose(True)
        setattr(namespace, self.dest, True)


def parse_groups(values: Sequence[str]) -> dict[str, list[str]]:
    """``["NAME=f1,f2", ...]`` as {NAME: [f1, f2]}; members are names or 0-based indexes."""
    groups: dict[str, list[str]] = {}
    for value in values:
        name, _, members = value.partition("=")
        names = [m.strip() for m in members.split(",") if m.strip()]
        if not name.strip() or not names or name.strip() in groups:
            raise InvalidParameterError("--group", "must be NAME=F1,F2 with a new name and at least one feature", value)
        groups[name.strip()] = names
    return groups


def _member(value: str) -> str | int:
    return int(value) if value.isdigit() else value


def options_from_args(args: argparse.Namespace, feature_names: Sequence[str] | None):
    """The API's Options from the parsed command line."""
    from .api import Options

    if args.num_cpus is not None:
        validation.positive_int("--num-cpus", args.num_cpus)
    validation.positive_finite("--connect-timeout", args.connect_timeout)
    return Options(
        n_repeats=args.repeats, first_repeat=args.first_repeat, perturbation=args.perturbation, noise_scale=args.noise_scale,
        noise_relative=args.noise_relative, ablate_value=args.ablate_value, metric=args.metric, loss=args.loss,
        groups={name: [_member(m) for m in members] for name, members in parse_groups(args.group).items()},
        per_step=args.per_step, resample=args.resample, random_state=args.seed, confidence=args.confidence,
        interval=args.interval, target_halfwidth=args.target_halfwidth, relative=args.relative,
        max_repeats=args.max_repeats, wave_repeats=args.wave_repeats, feature_names=feature_names,
        batch_size=args.eval_batch_size, shard_size=args.shard_size,
    )


_OPTION_NAMES = {
    "n_repeats": "--repeats", "random_state": "--seed", "batch_size": "--eval-batch-size",
    "shard_size": "--shard-size", "X": "--data", "y": "--labels", "groups": "--group",
    "feature_names": "--feature-names",
}


def as_option_error(error: InvalidParameterError) -> InvalidParameterError:
    """The same error naming the command-line option instead of the API parameter."""
    option = _OPTION_NAMES.get(error.parameter, "--" + error.parameter.replace("_", "-"))
    rule = error.rule.replace("batch_size", "--eval-batch-size")
    return InvalidParameterError(option, rule, error.value)


def prepare_request(model, sample, labels, options):
    """:func:`rnnimp.api.prepare`, with errors naming command-line options."""
    from .api import prepare

    try:
        return prepare(model, sample, labels, options)
    except InvalidParameterError as error:
        raise as_option_error(error) from None


def check_out(out: str, configuration: dict[str, Any], overwrite: bool) -> None:
    """Refuse an --out holding results or an unfinished run of another configuration.

    With ``overwrite`` those are removed instead. Called before any work.
    """
    from .checkpoint import Checkpoint, clear, differences

    try:
        filesystem, folder = output.resolve(out)
        info = filesystem.get_file_info(f"{folder}/{output.SUMMARY_FILE}")
        checkpoint = Checkpoint(out, {})
        has_checkpoint = checkpoint.exists()
    except (OSError, ValueError) as error:
        raise InvalidParameterError("--out", f"must be a reachable location ({error})", out) from None
    if overwrite:
        clear(out)
        return
    previous = None
    if has_checkpoint:
        previous = checkpoint.read_manifest()
    elif info.type.name != "NotFound":
        try:
            previous = output.read_metadata(f"{folder}/{output.SUMMARY_FILE}" if "://" not in out
                                            else out.rstrip("/") + "/" + output.SUMMARY_FILE)
        except Exception:
            previous = {"unreadable": True}
    if previous is None:
        return
    current = {"configuration": configuration["configuration"], "job": configuration["job"]}
    previous = {"configuration": previous.get("configuration", {}), "job": previous.get("job", {})}
    differing = differences(previous, current)
    if differing:
        what = "an unfinished run" if has_checkpoint else "results"
        raise InvalidParameterError(
            "--out", f"holds {what} of another configuration (differs in {', '.join(differing)}); "
            "use --overwrite or another folder", out)


def execute(args: argparse.Namespace, request, job_configuration: dict[str, Any],
            obtain_model: Callable[[], tuple[Any, dict[str, Any]]], architecture_json: str) -> int:
    """Start Ray, warm the workers up, obtain the model (train or load), run, write, report.

    ``obtain_model`` returns the model and extra metadata (e.g. training
    losses); it runs on the driver while the workers compile the model.
    """
    from . import distributed
    from .api import run
    from .modelio import model_to_bytes

    logs.setup()
    timings: dict[str, float] = {}
    job_started = started = time.perf_counter()
    where = distributed.connect(args.num_cpus, args.connect_timeout)
    sample = request.sample
    try:
        distributed.check_sizes(sample, request.labels, request.settings, architecture_json)
    except RnnimpError:
        distributed.shutdown()
        raise
    executor = distributed.RayExecutor().warm_up(
        architecture_json, request.settings.layout.batch_size, sample.shape[1], sample.shape[2])
    timings["start_ray"] = time.perf_counter() - started
    print(f"rnnimp: running on {where} with {len(executor.actors)} workers; results go to {args.out}", flush=True)
    try:
        started = time.perf_counter()
        model, model_metadata = obtain_model()
        timings[model_metadata.pop("phase", "load_model")] = time.perf_counter() - started
        result = run(model, request, executor=executor, progress=not args.quiet, checkpoint=args.out,
                     metadata={"job": job_configuration, **model_metadata, "timings_s": timings})
        if result.metadata["units_from_checkpoint"]:
            print(f"rnnimp: resumed: {result.metadata['units_from_checkpoint']} of "
                  f"{result.metadata['n_units']} units came from the checkpoint in {args.out}", flush=True)
        started = time.perf_counter()
        paths = result.write(args.out, model_bytes=model_to_bytes(model))
        write_s = time.perf_counter() - started
    finally:
        executor.shutdown()
        distributed.shutdown()
    print()
    print(result.format_summary())
    print()
    print(format_phases(result.metadata["timings_s"], write_s, time.perf_counter() - job_started))
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    return 0


def format_phases(timings: dict[str, float], write_s: float, total_s: float) -> str:
    """One line of wall times per phase, with the fixed overhead (all but training and units)."""
    order = ["start_ray", "train", "load_model", "wait_workers", "broadcast", "baseline", "units"]
    phases = {name: timings[name] for name in order if name in timings}
    phases["write"] = write_s
    overhead = total_s - phases.get("train", 0.0) - phases.get("units", 0.0)
    listed = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items())
    return f"phases: {listed}; total {total_s:.2f} s, fixed overhead {overhead:.2f} s"
