"""The reference experiment as a Ray job.

Trains the reference LSTM on x1*x2 once on the driver (or loads --model),
then measures the importance of its three inputs on Ray workers and writes
model.keras, effects.parquet and summary.parquet into --out.

Attaches to the cluster in RAY_ADDRESS (as under ``ray job submit``), or
starts an embedded local Ray of --num-cpus CPUs.
"""

from __future__ import annotations

import sys
import time
from typing import Sequence

from rnnimp import cli, output, validation
from rnnimp.errors import InvalidParameterError


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(
        prog="python -m jobs.seed_importance",
        description=__doc__, formatter_class=cli.argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--out", default="results/seed_importance",
        help="output folder or pyarrow.fs URI, e.g. s3://bucket/run (default: %(default)s)")
    add("--samples", type=int, default=250, help="series in the evaluation sample (default: %(default)s)")
    add("--repeats", type=int, default=30, help="noise repeats per feature, >= 2 (default: %(default)s)")
    add("--noise-scale", type=float, default=0.2,
        help="standard deviation of the Gaussian noise added to a feature (default: %(default)s)")
    add("--seed", type=int, default=0, help="the one seed all randomness derives from (default: %(default)s)")
    add("--confidence", type=float, default=0.95, help="confidence level of the intervals (default: %(default)s)")
    add("--epochs", type=int, default=5, help="training epochs (default: %(default)s)")
    add("--steps-per-epoch", type=int, default=1000, help="training batches per epoch (default: %(default)s)")
    add("--batch-size", type=int, default=5, help="series per training batch (default: %(default)s)")
    add("--model", default=None, help="a .keras model to load instead of training (input (10, 3))")
    add("--num-cpus", type=int, default=None,
        help="CPUs of the embedded local Ray (default: all); ignored when RAY_ADDRESS is set")
    add("--eval-batch-size", type=int, default=4096,
        help="series per forward pass on the workers (default: %(default)s)")
    add("--shard-size", type=int, default=65536,
        help="series per unit of work, a multiple of --eval-batch-size (default: %(default)s)")
    add("--overwrite", action="store_true", help="replace results in --out from another configuration")
    add("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def validate(args) -> dict:
    """Check every option before any work starts; return the run configuration."""
    for name in ("samples", "repeats", "epochs", "steps_per_epoch", "batch_size", "eval_batch_size", "shard_size"):
        validation.positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
    if args.repeats < 2:
        raise InvalidParameterError("--repeats", "must be at least 2 for a confidence interval", args.repeats)
    if args.num_cpus is not None:
        validation.positive_int("--num-cpus", args.num_cpus)
    validation.positive_finite("--noise-scale", args.noise_scale)
    validation.open_unit_interval("--confidence", args.confidence)
    validation.seed("--seed", args.seed)
    from rnnimp.method import Layout

    try:
        Layout.for_sample(args.samples, args.eval_batch_size, args.shard_size)
    except InvalidParameterError as error:
        raise InvalidParameterError("--shard-size", error.rule.replace("batch_size", "--eval-batch-size"),
                                    args.shard_size) from None
    configuration = {
        "job": "seed_importance", "samples": args.samples, "repeats": args.repeats,
        "noise_scale": args.noise_scale, "seed": args.seed, "confidence": args.confidence,
        "model": args.model,
    }
    if args.model is None:
        configuration.update(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size)
    return configuration


def check_out(out: str, configuration: dict, overwrite: bool) -> None:
    """Refuse an --out holding results of another configuration (unless --overwrite)."""
    filesystem, folder = output.resolve(out)
    existing = f"{folder}/{output.EFFECTS_FILE}"
    try:
        info = filesystem.get_file_info(existing)
    except OSError as error:
        raise InvalidParameterError("--out", f"must be a reachable location ({error})", out) from None
    if overwrite or info.type.name == "NotFound":
        return
    try:
        previous = output.read_metadata(existing if "://" not in out else out.rstrip("/") + "/" + output.EFFECTS_FILE)
        previous_configuration = previous.get("job_configuration", {})
    except Exception:
        previous_configuration = {"unreadable": True}
    differing = sorted(
        key for key in set(previous_configuration) | set(configuration)
        if previous_configuration.get(key) != configuration.get(key)
    )
    if differing:
        raise InvalidParameterError(
            "--out", f"holds results of another configuration (differs in {', '.join(differing)}); "
            "use --overwrite or another folder", out,
        )


def format_phases(timings: dict, write_s: float, total_s: float) -> str:
    """One line of wall times per phase, with the fixed overhead (all but training and units)."""
    order = ["start_ray", "train", "load_model", "wait_workers", "broadcast", "baseline", "units"]
    phases = {name: timings[name] for name in order if name in timings}
    phases["write"] = write_s
    overhead = total_s - phases.get("train", 0.0) - phases.get("units", 0.0)
    listed = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items())
    return f"phases: {listed}; total {total_s:.2f} s, fixed overhead {overhead:.2f} s"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configuration = validate(args)
    check_out(args.out, configuration, args.overwrite)

    from rnnimp.modelio import architecture, configure_tensorflow, load_model, model_to_bytes

    configure_tensorflow(None)
    from rnnimp import reference, sensitivity_importance

    model = None
    if args.model is not None:
        model = load_model(args.model, "--model")
        if tuple(model.input_shape[1:]) != (reference.TIME_STEPS, reference.N_FEATURES):
            raise InvalidParameterError(
                "--model", f"must take input (batch, {reference.TIME_STEPS}, {reference.N_FEATURES})",
                f"{args.model} with input {model.input_shape}",
            )

    from rnnimp import distributed
    from rnnimp.method import Layout

    timings = {}
    job_started = started = time.perf_counter()
    where = distributed.connect(args.num_cpus)
    # Workers import TF and compile the forward pass while the driver trains.
    executor = distributed.RayExecutor().warm_up(
        architecture(model if model is not None else reference.build_model(args.seed)),
        Layout.for_sample(args.samples, args.eval_batch_size, args.shard_size).batch_size,
        reference.TIME_STEPS, reference.N_FEATURES,
    )
    timings["start_ray"] = time.perf_counter() - started
    print(f"rnnimp: running on {where} with {len(executor.actors)} workers", flush=True)
    try:
        started = time.perf_counter()
        training = {}
        if model is None:
            trained = reference.train_model(
                args.seed, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size)
            model = trained.model
            training = {"final_loss": trained.final_loss, "epoch_losses": list(trained.losses)}
            timings["train"] = time.perf_counter() - started
            print(f"rnnimp: trained the reference LSTM in {timings['train']:.1f} s, final loss {trained.final_loss:.4f}",
                  flush=True)
        else:
            timings["load_model"] = time.perf_counter() - started
        sample = reference.evaluation_sample(args.seed, args.samples)
        result = sensitivity_importance(
            model, sample, n_repeats=args.repeats, noise_scale=args.noise_scale, random_state=args.seed,
            confidence=args.confidence, feature_names=reference.FEATURE_NAMES, executor=executor,
            batch_size=args.eval_batch_size, shard_size=args.shard_size, progress=not args.quiet,
            metadata={"job_configuration": configuration, "training": training, "timings_s": timings},
        )
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


if __name__ == "__main__":
    sys.exit(cli.run(main))
