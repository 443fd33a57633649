"""The reference experiment as a Ray job.

Trains the reference LSTM on x1*x2 once on the driver (or loads --model),
then measures the importance of its three inputs on Ray workers and writes
model.keras, effects.parquet, summary.parquet (and comparisons, rank
probabilities and a chart) into --out. With --metric loss-increase the labels
are the reference targets, x1*x2 at each step of the evaluation series.

Attaches to the cluster in RAY_ADDRESS (as under ``ray job submit``), or
starts an embedded local Ray of --num-cpus CPUs. If a run dies, the same
command continues it from the checkpoint kept in --out.
"""

from __future__ import annotations

import sys
from typing import Sequence

from rnnimp import cli, reference, validation
from rnnimp.errors import InvalidParameterError

JOB = "seed_importance"
# The API's data parameters, as this job's options: it draws --samples series and their targets itself.
INPUTS = {"X": "--samples", "y": "--model"}


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m jobs.seed_importance", description=__doc__,
                                formatter_class=cli.argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--samples", type=int, default=250, help="series in the evaluation sample (default: %(default)s)")
    add("--epochs", type=int, default=5, help="training epochs (default: %(default)s)")
    add("--steps-per-epoch", type=int, default=1000, help="training batches per epoch (default: %(default)s)")
    train_batch = add("--train-batch-size", type=int, default=5,
                      help="series per training batch (default: %(default)s)")
    cli.add_old_spellings(parser, train_batch, "--batch-size")
    add("--model", default=None, help="a .keras model to load (safe mode) instead of training; input (10, 3)")
    cli.add_run_options(parser, JOB, out_default="results/seed_importance")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("samples", "epochs", "steps_per_epoch", "train_batch_size"):
        validation.positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
    validation.seed("--seed", args.random_state)
    execution = cli.execution_from_args(args, JOB)
    job = {"name": JOB, "samples": args.samples, "model": args.model}
    if args.model is None:  # "batch_size": the key of --train-batch-size's value since before its rename
        job.update(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.train_batch_size)

    from rnnimp.modelio import check_model_path
    from rnnimp.options import check_options, prepare

    options = cli.options_from_args(args, JOB, feature_names=reference.FEATURE_NAMES)
    names = cli.parameter_names(JOB, INPUTS)
    check_options(options, names)
    if args.model is not None:
        check_model_path(args.model, "--model")
    # Ray starts now, in the background, while this process imports TensorFlow; the workers start now too when
    # the model is loaded, else when cli.execute has seen how large the evaluation is.
    workers = cli.start_workers(execution, actors=args.model is not None)
    try:
        from rnnimp.modelio import architecture, configure_tensorflow, load_model

        configure_tensorflow(workers.driver_threads)
        loaded = load_model(args.model, "--model") if args.model else None
        shape_model = loaded if loaded is not None else reference.build_model(args.random_state)
        if tuple(shape_model.input_shape[1:]) != (reference.TIME_STEPS, reference.N_FEATURES):
            raise InvalidParameterError(
                "--model", f"must take input (batch, {reference.TIME_STEPS}, {reference.N_FEATURES})",
                f"{args.model} with input {shape_model.input_shape}")
        labels = None
        if "loss-increase" in args.metric.split(","):
            if tuple(shape_model.output_shape[1:]) not in ((reference.TIME_STEPS,), (reference.TIME_STEPS, 1)):
                raise InvalidParameterError(
                    "--model", f"must have one output per time step ({reference.TIME_STEPS}) for --metric "
                    "loss-increase against the reference targets", f"{args.model} with output {shape_model.output_shape}")
            sample, labels = reference.evaluation_series(args.random_state, args.samples)
        else:
            sample = reference.evaluation_sample(args.random_state, args.samples)
        request = prepare(shape_model, sample, labels, options, names)
        cli.check_out(execution.out, {"configuration": request.configuration, "job": job}, execution.overwrite)
    except BaseException:
        workers.stop()
        raise

    def obtain_model(on_built):
        if loaded is not None:
            return loaded, {"phase": "load_model"}
        trained = reference.train_model(args.random_state, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                                        batch_size=args.train_batch_size, on_built=on_built)
        print(f"rnnimp: trained the reference LSTM, final loss {trained.final_loss:.4f}", flush=True)
        return trained.model, {"phase": "train",
                               "training": {"final_loss": trained.final_loss, "epoch_losses": list(trained.losses)}}

    return cli.execute(execution, request, job, obtain_model, architecture(shape_model), workers,
                       loaded=loaded is not None)


if __name__ == "__main__":
    cli.exit_process(cli.run(main))
