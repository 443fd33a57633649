"""Throughput benchmark: rnnimp's distributed evaluation against the plain loop
and the machine's forward-pass limit, on the same trained model and sample.

Rows of the table:
  (a) plain loop      copy + perturb + model.predict (batch 32) per (feature, repeat), on a
                      copy of the model compiled with Keras' defaults (no XLA, one batch
                      per step), timed on --plain-passes passes and scaled to all passes
  (b) forward limit   a compiled forward pass over the whole sample in fixed batches, nothing
                      else, on all threads (this process) and on one thread (a subprocess):
                      model(x) in a tf.function under XLA, and the forward rnnimp's workers run
                      (for stacks of LSTM layers its fused XLA program, see rnnimp.lstm)
  (c) rnnimp          the distributed evaluation on an embedded local Ray of --num-cpus
                      workers: baseline and all units, from first submit to last result

efficiency = (c) throughput / (workers x one-thread limit of rnnimp's own forward pass), so it
measures what distribution and perturbation cost; efficiency_vs_keras_limit uses model(x)'s
one-thread limit instead. The last line is JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Sequence

from rnnimp import cli, validation

GIB = 1024**3


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m jobs.benchmark", description=__doc__,
                                formatter_class=cli.argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--samples", type=int, default=100_000, help="series in the evaluation sample (default: %(default)s)")
    add("--repeats", type=int, default=30, help="repeats per feature (default: %(default)s)")
    add("--num-cpus", type=int, default=os.cpu_count(), help="workers / CPUs of the local Ray (default: %(default)s)")
    add("--plain-passes", type=int, default=3, help="passes of the plain loop to time (default: %(default)s)")
    add("--eval-batch-size", type=int, default=4096, help="series per forward pass (default: %(default)s)")
    add("--shard-size", type=int, default=65536, help="series per unit of work (default: %(default)s)")
    add("--seed", type=int, default=0, help="seed (default: %(default)s)")
    add("--epochs", type=int, default=5, help="training epochs of the reference model (default: %(default)s)")
    add("--compare-training", action="store_true",
        help="also train again, fast and with plain fit (no XLA, one step per call), one after the other "
             "with the workers stopped, and compare")
    add("--one-thread-limit", nargs=3, metavar=("MODEL", "SAMPLE", "BATCH"), help=argparse_suppress())
    return parser.parse_args(argv)


def argparse_suppress():
    return cli.argparse.SUPPRESS


def one_thread_limits(model_path: str, sample_path: str, batch_size: int) -> tuple[float, float]:
    """Seconds per forward pass on one TF thread, measured in a fresh process: (rnnimp's, model(x)'s)."""
    done = subprocess.run(
        [sys.executable, "-m", "jobs.benchmark", "--one-thread-limit", model_path, sample_path, str(batch_size)],
        capture_output=True, text=True, check=True,
    )
    fused_s, keras_s = done.stdout.strip().splitlines()[-1].split()
    return float(fused_s), float(keras_s)


def measure_one_thread(model_path: str, sample_path: str, batch_size: int) -> None:
    from rnnimp.modelio import configure_tensorflow

    configure_tensorflow(threads=1)
    import numpy as np

    from jobs.benchmark_tools import forward_seconds_per_pass
    from rnnimp.modelio import load_model

    sample, model = np.load(sample_path), load_model(model_path)
    print(*(forward_seconds_per_pass(model, sample, batch_size, fused) for fused in (True, False)))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one_thread_limit:
        model_path, sample_path, batch = args.one_thread_limit
        measure_one_thread(model_path, sample_path, int(batch))
        return 0
    for name in ("samples", "repeats", "num_cpus", "plain_passes", "eval_batch_size", "shard_size", "epochs"):
        validation.positive_int(f"--{name.replace('_', '-')}", getattr(args, name))

    from rnnimp.modelio import architecture, configure_tensorflow

    configure_tensorflow(None)
    import numpy as np

    from rnnimp import distributed, reference, sensitivity_importance
    from rnnimp.errors import Names
    from jobs.benchmark_tools import forward_seconds_per_pass, plain_loop_seconds_per_pass, plainly_compiled
    from rnnimp.forward import forward_kind
    from rnnimp.method import Layout
    from rnnimp.worker import peak_rss_bytes

    figures: dict = {"samples": args.samples, "repeats": args.repeats, "workers": args.num_cpus,
                     "time_steps": reference.TIME_STEPS, "features": reference.N_FEATURES}
    layout = Layout.for_sample(args.samples, args.eval_batch_size, args.shard_size,
                               Names({"batch_size": "--eval-batch-size", "shard_size": "--shard-size"}))
    job_started = time.perf_counter()
    distributed.connect(args.num_cpus)
    executor = distributed.RayExecutor().warm_up(
        architecture(reference.build_model(args.seed)), layout.batch_size,
        ((reference.TIME_STEPS, reference.N_FEATURES),))
    figures["start_ray_s"] = time.perf_counter() - job_started

    started = time.perf_counter()
    trained = reference.train_model(args.seed, epochs=args.epochs)
    figures["train_fast_s"], figures["train_fast_loss"] = time.perf_counter() - started, trained.final_loss
    model = trained.model
    figures["forward"] = forward_kind(model, jit_compile=True)
    sample = reference.evaluation_sample(args.seed, args.samples)
    figures["sample_bytes"] = sample.nbytes

    result = sensitivity_importance(model, sample, n_repeats=args.repeats, random_state=args.seed,
                                    executor=executor, batch_size=args.eval_batch_size,
                                    shard_size=args.shard_size)
    timings = result.metadata["timings_s"]
    worker_stats = executor.worker_stats()
    figures["driver_peak_rss_bytes"] = peak_rss_bytes()  # rnnimp's driver, before the comparisons below
    executor.shutdown()
    distributed.shutdown()
    total_s = time.perf_counter() - job_started
    passes = reference.N_FEATURES * args.repeats
    steps_per_pass = args.samples * reference.TIME_STEPS
    eval_s = timings["baseline"] + timings["units"]
    figures.update(
        rnnimp_eval_s=eval_s, rnnimp_units_s=timings["units"], rnnimp_baseline_s=timings["baseline"],
        rnnimp_steps_per_s=(passes + 1) * steps_per_pass / eval_s,
        fixed_overhead_s=total_s - figures["train_fast_s"] - eval_s,
        worker_peak_rss_bytes=max(stat["peak_rss_bytes"] for stat in worker_stats),
    )

    with tempfile.TemporaryDirectory() as folder:
        model_path, sample_path = os.path.join(folder, "model.keras"), os.path.join(folder, "sample.npy")
        model.save(model_path)
        np.save(sample_path, sample)
        one_thread_s, keras_one_thread_s = one_thread_limits(model_path, sample_path, layout.batch_size)
    all_threads_s = forward_seconds_per_pass(model, sample, layout.batch_size, fused=True)
    keras_all_threads_s = forward_seconds_per_pass(model, sample, layout.batch_size, fused=False)
    plain_s = plain_loop_seconds_per_pass(plainly_compiled(model), sample, 0.2, args.plain_passes,
                                          np.random.default_rng(args.seed))
    figures.update(
        one_thread_steps_per_s=steps_per_pass / one_thread_s,
        all_threads_steps_per_s=steps_per_pass / all_threads_s,
        keras_one_thread_steps_per_s=steps_per_pass / keras_one_thread_s,
        keras_all_threads_steps_per_s=steps_per_pass / keras_all_threads_s,
        plain_steps_per_s=steps_per_pass / plain_s,
        plain_scaled_s=plain_s * passes,
    )
    figures["efficiency"] = figures["rnnimp_steps_per_s"] / (args.num_cpus * figures["one_thread_steps_per_s"])
    figures["efficiency_vs_keras_limit"] = (figures["rnnimp_steps_per_s"]
                                            / (args.num_cpus * figures["keras_one_thread_steps_per_s"]))
    figures["speedup_over_plain"] = figures["rnnimp_steps_per_s"] / figures["plain_steps_per_s"]

    if args.compare_training:
        # Side by side on an idle machine: the in-job training above shares the cores with the workers' start-up.
        for name, fast in (("fast_idle", True), ("plain", False)):
            started = time.perf_counter()
            training = reference.train_model(args.seed, epochs=args.epochs, fast=fast)
            figures[f"train_{name}_s"], figures[f"train_{name}_loss"] = time.perf_counter() - started, training.final_loss
        figures["train_speedup"] = figures["train_plain_s"] / figures["train_fast_idle_s"]
    figures["benchmark_process_peak_rss_bytes"] = peak_rss_bytes()  # including the plain loop and limits

    print(format_table(figures, passes, args.plain_passes))
    print(json.dumps({key: round(value, 4) if isinstance(value, float) else value for key, value in figures.items()}))
    return 0


def format_table(f: dict, passes: int, plain_passes: int) -> str:
    steps = f["samples"] * f["time_steps"]
    rows = [
        (f"(a) plain loop, model.predict (timed {plain_passes} passes, scaled)", f["plain_scaled_s"],
         f["plain_steps_per_s"]),
        ("(b) model(x) forward limit (tf.function, XLA), all threads",
         passes * steps / f["keras_all_threads_steps_per_s"], f["keras_all_threads_steps_per_s"]),
        ("(b) model(x) forward limit (tf.function, XLA), one thread",
         passes * steps / f["keras_one_thread_steps_per_s"], f["keras_one_thread_steps_per_s"]),
        (f"(b) rnnimp's forward ({f['forward']}) limit, all threads", passes * steps / f["all_threads_steps_per_s"],
         f["all_threads_steps_per_s"]),
        (f"(b) rnnimp's forward ({f['forward']}) limit, one thread", passes * steps / f["one_thread_steps_per_s"],
         f["one_thread_steps_per_s"]),
        (f"(c) rnnimp on {f['workers']} Ray workers (baseline + units)", f["rnnimp_eval_s"], f["rnnimp_steps_per_s"]),
    ]
    lines = [f"{f['samples']} series x {f['time_steps']} steps, {f['features']} features x {f['repeats']} repeats"
             f" = {passes} perturbed passes",
             f"{'':<62} {'wall s':>9} {'Msteps/s':>9} {'vs (a)':>8}"]
    for name, seconds, rate in rows:
        lines.append(f"{name:<62} {seconds:>9.2f} {rate / 1e6:>9.2f} {rate / f['plain_steps_per_s']:>7.1f}x")
    lines += [
        f"efficiency of (c): {f['efficiency']:.1%} of {f['workers']} x the one-thread limit of rnnimp's forward;"
        f" {f['efficiency_vs_keras_limit']:.1%} of {f['workers']} x model(x)'s",
        f"fixed overhead (all but training and evaluation): {f['fixed_overhead_s']:.2f} s"
        f" (start Ray {f['start_ray_s']:.2f} s)",
        f"training in the job, XLA + 100 steps per call, beside the workers' start-up: {f['train_fast_s']:.2f} s,"
        f" loss {f['train_fast_loss']:.4f}",
    ]
    if "train_plain_s" in f:
        lines.append(f"side by side, workers stopped: XLA + 100 steps per call {f['train_fast_idle_s']:.2f} s,"
                     f" loss {f['train_fast_idle_loss']:.4f}; plain fit {f['train_plain_s']:.2f} s,"
                     f" loss {f['train_plain_loss']:.4f} ({f['train_speedup']:.1f}x slower)")
    lines.append(f"peak RSS: rnnimp driver {f['driver_peak_rss_bytes'] / GIB:.2f} GiB (sample {f['sample_bytes'] / GIB:.2f} GiB),"
                 f" largest worker {f['worker_peak_rss_bytes'] / GIB:.2f} GiB; whole benchmark process"
                 f" {f['benchmark_process_peak_rss_bytes'] / GIB:.2f} GiB")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(cli.run(main))
