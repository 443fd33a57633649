"""Benchmark of issue 14's targets, measured side by side in one run, on one trained reference model.

What is timed (every figure is printed beside its target, then one JSON line with all of them):
  whole commands   `python -m jobs.seed_importance` with its defaults, and `python -m jobs.importance` on the
                   saved reference model with --samples series x --repeats repeats, --perturbation permute
                   --metric loss-increase --loss mse with labels: wall from the subprocess's start to its exit
                   (jobs.importance once per --importance-executors value: on Ray, and --executor local)
  scikit-learn     sklearn.inspection.permutation_importance, n_jobs = --num-cpus, on the same saved model,
                   sample, labels and perturbation (each feature's whole trajectory permuted), MSE increase,
                   n_repeats = --repeats, run as a subprocess: its wall against the jobs.importance command's,
                   and the largest difference of the means
  plain TensorFlow tf.function around model(x), with and without XLA, one thread (a subprocess), batches of
                   4096, 16384 and the whole sample: the best of them
  forward limit    a compiled forward pass over the whole sample in fixed batches, nothing else, on one thread
                   (a subprocess) and on all threads: model(x) under XLA, and the forward rnnimp's workers
                   run (rnnimp.forward.model_forward); and the latter in --num-cpus one-thread processes timed
                   at the same moment for --concurrent-window-s seconds: what the cores give together
  evaluation phase rnnimp's baseline + all units on an embedded local Ray of --num-cpus workers, from first
                   submit to last result; efficiency = its throughput / (workers x the one-thread limit of
                   the forward the workers run)
  model kinds      model(x) under XLA vs rnnimp.forward.model_forward on one thread, small random models
  per-step units   the units phase of a --per-step map, --per-step-series series x --per-step-repeats repeats
  plain loop       copy + perturb + model.predict (batch 32) per (feature, repeat), on a copy of the model
                   compiled with Keras' defaults, timed on --plain-passes passes and scaled to all passes
Throughput is in sample-steps per second (series x time steps evaluated).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Sequence

from jobs import benchmark_dataset
from rnnimp import cli, validation
from jobs.benchmark_tools import KIND_NAMES
from rnnimp.errors import InvalidParameterError, RnnimpError

GIB = 1024**3
SKLEARN_INSTALL = "pip install 'scikit-learn>=1.4' (or pip install -e '.[bench]')"


class MissingExtraError(RnnimpError):
    """A benchmark-only dependency is not installed."""


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m jobs.benchmark", description=__doc__,
                                formatter_class=cli.argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--samples", type=int, default=100_000, help="series in the evaluation sample (default: %(default)s)")
    add("--repeats", type=int, default=30, help="repeats per feature (default: %(default)s)")
    add("--num-cpus", type=int, default=os.cpu_count(),
        help="workers / CPUs of the local Ray, and scikit-learn's n_jobs (default: %(default)s)")
    add("--plain-passes", type=int, default=3, help="passes of the plain loop to time (default: %(default)s)")
    add("--eval-batch-size", type=int, default=4096, help="series per forward pass (default: %(default)s)")
    add("--shard-size", type=int, default=65536, help="series per unit of work (default: %(default)s)")
    add("--seed", type=int, default=0, help="seed (default: %(default)s)")
    add("--epochs", type=int, default=5, help="training epochs of the reference model (default: %(default)s)")
    add("--per-step-series", type=int, default=500,
        help="series of the per-step units case (default: %(default)s)")
    add("--per-step-repeats", type=int, default=100,
        help="repeats of the per-step units case (default: %(default)s)")
    add("--kinds-series", type=int, default=16384,
        help="series per pass of the model-kind forward speed-ups, in batches of 4096 (default: %(default)s)")
    add("--kinds", default=None, metavar="NAME,...",
        help="only these model kinds, comma-separated (default: all: " + ", ".join(KIND_NAMES) + ")")
    add("--sklearn-jobs", type=int, default=None,
        help="scikit-learn's n_jobs (default: --num-cpus, as the target asks)")
    add("--skip-commands", action="store_true", help="skip both whole-command walls (and so the wall-to-wall ratio)")
    add("--skip-seed-command", action="store_true", help="skip the jobs.seed_importance wall")
    add("--skip-importance-command", action="store_true",
        help="skip the jobs.importance walls (and so the wall-to-wall ratios and the means' agreement)")
    add("--importance-executors", default="ray,local", metavar="ray,local",
        help="time jobs.importance with these --executor values, comma-separated (default: %(default)s)")
    add("--skip-sklearn", action="store_true", help="skip the scikit-learn comparison")
    add("--skip-kinds", action="store_true", help="skip the per-model-kind forward speed-ups")
    add("--skip-per-step", action="store_true", help="skip the per-step units case")
    add("--skip-plain-loop", action="store_true", help="skip the plain model.predict loop")
    add("--compare-training", action="store_true",
        help="also train again, fast and with plain fit (no XLA, one step per call), one after the other "
             "with the workers stopped, and compare")
    benchmark_dataset.add_options(add)
    add("--concurrent-window-s", type=float, default=5.0,
        help="seconds each process of the concurrent forward limit times (default: %(default)s)")
    add("--one-thread-limit", nargs=3, metavar=("MODEL", "SAMPLE", "BATCH"), help=cli.argparse.SUPPRESS)
    add("--concurrent-limit", nargs=3, metavar=("MODEL", "SAMPLE", "BATCH"), help=cli.argparse.SUPPRESS)
    add("--sklearn-run", nargs=3, metavar=("MODEL", "SAMPLE", "LABELS"), help=cli.argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- measurements run in their own process ---------------------------------------------------------

def measure_one_thread(model_path: str, sample_path: str, batch_size: int, kinds_series: int | None,
                       seed: int, kinds: Sequence[str] = KIND_NAMES) -> None:
    """Print one JSON line of one-thread seconds per pass: rnnimp's forward, model(x) under XLA, plain TF, kinds."""
    from rnnimp.modelio import configure_tensorflow

    configure_tensorflow(threads=1)
    import numpy as np

    from jobs import benchmark_tools as tools
    from rnnimp.modelio import load_model

    sample, model = np.load(sample_path), load_model(model_path)
    figures = {"fused_s": tools.forward_seconds_per_pass(model, sample, batch_size, fused=True),
               "keras_s": tools.forward_seconds_per_pass(model, sample, batch_size, fused=False),
               "plain_tf_s": tools.best_plain_tf_seconds_per_pass(model, sample), "kinds": None}
    if kinds_series is not None:
        figures["kinds"] = {
            name: tools.forward_speedup(kind_model, tools.kind_inputs(seed, kinds_series, two_inputs), 4096)
            for name, (kind_model, two_inputs) in tools.kind_models(seed).items() if name in kinds}
    print(json.dumps(figures))


def measure_concurrently(model_path: str, sample_path: str, batch_size: int, window_s: float) -> None:
    """One of the processes of :func:`concurrent_limit`: print "ready" once compiled, wait for a line on stdin,
    then print one JSON line: this process's one-thread forward throughput over ``window_s``."""
    from rnnimp.modelio import configure_tensorflow

    configure_tensorflow(threads=1)
    import numpy as np

    from jobs.benchmark_tools import forward_steps_per_s
    from rnnimp.modelio import load_model

    def wait_for_the_others() -> None:
        print("ready", flush=True)
        sys.stdin.readline()

    rate = forward_steps_per_s(load_model(model_path), np.load(sample_path), batch_size, window_s,
                               start=wait_for_the_others)
    print(json.dumps({"steps_per_s": rate}))


def concurrent_limit(model_path: str, sample_path: str, batch_size: int, processes: int,
                     window_s: float) -> list[float]:
    """The forward limit of ``processes`` one-thread processes timed at the same moment, each alone in its process
    as a worker is: their sample-steps per second, in process order.

    What the machine's cores deliver together, which is what the workers
    share: on a virtual machine two vCPUs need not run twice what one runs.
    """
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "jobs.benchmark", "--concurrent-limit", model_path, sample_path,
               str(batch_size), "--concurrent-window-s", str(window_s)]
    running = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=environment) for _ in range(processes)]
    try:
        for process in running:  # every one compiled before any starts timing
            if process.stdout.readline().strip() != "ready":
                break
        else:
            for process in running:
                process.stdin.write("go\n")
                process.stdin.flush()
        rates = []
        for process in running:
            out, err = process.communicate()
            if process.returncode != 0 or not out.strip():
                raise RuntimeError(f"the concurrent forward limit failed ({process.returncode}):\n{err[-3000:]}")
            rates.append(json.loads(out.strip().splitlines()[-1])["steps_per_s"])
        return rates
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
                process.wait()


def measure_sklearn(model_path: str, sample_path: str, labels_path: str, repeats: int, n_jobs: int,
                    seed: int) -> None:
    """Print one JSON line: scikit-learn's permutation importance means and the seconds of its call."""
    import keras
    import numpy as np

    from jobs.benchmark_tools import sklearn_permutation_importance

    model = keras.models.load_model(model_path)
    print(json.dumps(sklearn_permutation_importance(model, np.load(sample_path), np.load(labels_path),
                                                    repeats, n_jobs, seed)))


def chosen_kinds(kinds: str | None) -> tuple[str, ...]:
    """The model kinds ``--kinds`` names (all if None), in the benchmark's order; an unknown name is refused."""
    if kinds is None:
        return KIND_NAMES
    names = [name.strip() for name in kinds.split(",") if name.strip()]
    unknown = [name for name in names if name not in KIND_NAMES]
    if unknown or not names:
        raise InvalidParameterError("--kinds", "must name model kinds among " + ", ".join(KIND_NAMES), kinds)
    return tuple(name for name in KIND_NAMES if name in names)


def python_module(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    """(wall seconds from start to exit, the finished process) of ``python -m args``; RAY_ADDRESS cleared."""
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=environment)
    wall_s = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"python -m {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall_s, done


def summary_of(out: str) -> tuple[list[float], dict]:
    """(mean effect per target, in target order; the run's timings_s) from a job's --out folder."""
    import pyarrow.parquet as pq

    from rnnimp import output

    path = os.path.join(out, output.SUMMARY_FILE)
    table = pq.read_table(path)
    return table.column("mean").to_pylist(), output.read_metadata(path).get("timings_s", {})


# --- the benchmark -------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dataset or args.write_dataset:
        return benchmark_dataset.run(args)
    if args.one_thread_limit:
        model_path, sample_path, batch = args.one_thread_limit
        measure_one_thread(model_path, sample_path, int(batch), None if args.skip_kinds else args.kinds_series,
                           args.seed, chosen_kinds(args.kinds))
        return 0
    if args.concurrent_limit:
        model_path, sample_path, batch = args.concurrent_limit
        measure_concurrently(model_path, sample_path, int(batch), args.concurrent_window_s)
        return 0
    if args.sklearn_run:
        measure_sklearn(*args.sklearn_run, args.repeats, args.sklearn_jobs, args.seed)
        return 0
    for name in ("samples", "repeats", "num_cpus", "plain_passes", "eval_batch_size", "shard_size", "epochs",
                 "per_step_series", "per_step_repeats", "kinds_series"):
        validation.positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
    validation.positive_finite("--concurrent-window-s", args.concurrent_window_s)
    chosen_kinds(args.kinds)
    args.sklearn_jobs = args.num_cpus if args.sklearn_jobs is None else args.sklearn_jobs
    validation.positive_int("--sklearn-jobs", args.sklearn_jobs)
    if args.skip_commands:
        args.skip_seed_command = args.skip_importance_command = True
    args.importance_executors = importance_executors(args.importance_executors)
    if not args.skip_sklearn:
        try:
            import sklearn  # noqa: F401 - a benchmark-only extra, checked before anything runs
        except ImportError:
            raise MissingExtraError(f"the scikit-learn comparison needs scikit-learn: {SKLEARN_INSTALL}, "
                                    "or pass --skip-sklearn") from None

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
    sample, labels = reference.evaluation_series(args.seed, args.samples)
    figures["sample_bytes"] = sample.nbytes

    result = sensitivity_importance(model, sample, n_repeats=args.repeats, random_state=args.seed,
                                    executor=executor, batch_size=args.eval_batch_size,
                                    shard_size=args.shard_size)
    timings = result.metadata["timings_s"]
    total_s = time.perf_counter() - job_started
    figures["per_step_units_s"] = figures["per_step_cells"] = None
    if not args.skip_per_step:  # on the same workers, warmed up for its batch size: the units phase is the target
        per_step_sample = reference.evaluation_sample(args.seed, args.per_step_series)
        per_step_batch = Layout.for_sample(args.per_step_series, args.eval_batch_size, args.shard_size).batch_size
        executor.warm_up(architecture(model), per_step_batch, ((reference.TIME_STEPS, reference.N_FEATURES),))
        per_step = sensitivity_importance(model, per_step_sample, n_repeats=args.per_step_repeats,
                                          random_state=args.seed, executor=executor, per_step=True,
                                          batch_size=args.eval_batch_size, shard_size=args.shard_size)
        figures["per_step_units_s"] = per_step.metadata["timings_s"]["units"]
        figures["per_step_cells"] = int(np.prod(per_step.effects.shape))  # targets x steps x repeats
    worker_stats = executor.worker_stats()
    figures["driver_peak_rss_bytes"] = peak_rss_bytes()  # rnnimp's driver, before the comparisons below
    executor.shutdown()
    distributed.shutdown()
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
        model_path, sample_path, labels_path = (os.path.join(folder, name)
                                                for name in ("model.keras", "sample.npy", "labels.npy"))
        model.save(model_path)
        np.save(sample_path, sample)
        np.save(labels_path, labels)
        figures.update(whole_commands(args, folder, model_path, sample_path, labels_path))
        figures.update(sklearn_comparison(args, model_path, sample_path, labels_path, figures))
        _, done = python_module("jobs.benchmark", "--one-thread-limit", model_path, sample_path,
                                str(layout.batch_size), "--seed", str(args.seed), "--kinds-series",
                                str(args.kinds_series), *(["--skip-kinds"] if args.skip_kinds else []),
                                *(["--kinds", args.kinds] if args.kinds else []))
        one_thread = json.loads(done.stdout.strip().splitlines()[-1])
        figures["concurrent_steps_per_s"] = concurrent_limit(model_path, sample_path, layout.batch_size,
                                                             args.num_cpus, args.concurrent_window_s)
    all_threads_s = forward_seconds_per_pass(model, sample, layout.batch_size, fused=True)
    keras_all_threads_s = forward_seconds_per_pass(model, sample, layout.batch_size, fused=False)
    best_plain_tf = min(one_thread["plain_tf_s"], key=one_thread["plain_tf_s"].get)
    figures.update(
        one_thread_steps_per_s=steps_per_pass / one_thread["fused_s"],
        all_threads_steps_per_s=steps_per_pass / all_threads_s,
        keras_one_thread_steps_per_s=steps_per_pass / one_thread["keras_s"],
        keras_all_threads_steps_per_s=steps_per_pass / keras_all_threads_s,
        plain_tf_one_thread_s=one_thread["plain_tf_s"], plain_tf_best=best_plain_tf,
        plain_tf_one_thread_steps_per_s=steps_per_pass / one_thread["plain_tf_s"][best_plain_tf],
        kinds=one_thread["kinds"],
    )
    figures["efficiency"] = figures["rnnimp_steps_per_s"] / (args.num_cpus * figures["one_thread_steps_per_s"])
    figures["concurrent_limit_steps_per_s"] = sum(figures["concurrent_steps_per_s"])
    figures["cores_scaling"] = figures["concurrent_limit_steps_per_s"] / figures["one_thread_steps_per_s"]
    figures["efficiency_vs_concurrent_limit"] = (figures["rnnimp_steps_per_s"]
                                                 / figures["concurrent_limit_steps_per_s"])
    figures["efficiency_vs_keras_limit"] = (figures["rnnimp_steps_per_s"]
                                            / (args.num_cpus * figures["keras_one_thread_steps_per_s"]))
    figures["eval_vs_plain_tf"] = (figures["rnnimp_steps_per_s"]
                                   / (args.num_cpus * figures["plain_tf_one_thread_steps_per_s"]))
    figures["plain_steps_per_s"] = figures["plain_scaled_s"] = figures["speedup_over_plain"] = None
    if not args.skip_plain_loop:
        plain_s = plain_loop_seconds_per_pass(plainly_compiled(model), sample, 0.2, args.plain_passes,
                                              np.random.default_rng(args.seed))
        figures.update(plain_steps_per_s=steps_per_pass / plain_s, plain_scaled_s=plain_s * passes,
                       speedup_over_plain=figures["rnnimp_steps_per_s"] * plain_s / steps_per_pass)

    if args.compare_training:
        # Side by side on an idle machine: the in-job training above shares the cores with the workers' start-up.
        for name, fast in (("fast_idle", True), ("plain", False)):
            started = time.perf_counter()
            training = reference.train_model(args.seed, epochs=args.epochs, fast=fast)
            figures[f"train_{name}_s"], figures[f"train_{name}_loss"] = time.perf_counter() - started, training.final_loss
        figures["train_speedup"] = figures["train_plain_s"] / figures["train_fast_idle_s"]
    figures["benchmark_process_peak_rss_bytes"] = peak_rss_bytes()  # including the plain loop and limits
    figures["targets"] = targets(figures)

    print(format_table(figures, passes, args.plain_passes))
    print(format_targets(figures))
    print(json.dumps(rounded(figures)))
    return 0


def whole_commands(args, folder: str, model_path: str, sample_path: str, labels_path: str) -> dict:
    """Walls of the two commands, each from its subprocess's start to its exit, with what they wrote."""
    figures = {"seed_command_s": None, "seed_command_means": None}
    for executor in ("ray", "local"):
        figures.update({f"{command_key(executor)}_{part}": None for part in ("s", "means", "timings_s")})
    if not args.skip_seed_command:
        out = os.path.join(folder, "seed_importance")
        figures["seed_command_s"], _ = python_module("jobs.seed_importance", "--out", out, "--quiet")
        figures["seed_command_means"], _ = summary_of(out)
    for executor in [] if args.skip_importance_command else args.importance_executors:
        out, key = os.path.join(folder, f"importance_{executor}"), command_key(executor)
        figures[f"{key}_s"], _ = python_module(
            "jobs.importance", "--model", model_path, "--data", sample_path, "--labels", labels_path,
            "--repeats", str(args.repeats), "--perturbation", "permute", "--metric", "loss-increase",
            "--loss", "mse", "--seed", str(args.seed), "--num-cpus", str(args.num_cpus), "--out", out, "--quiet",
            "--executor", executor)
        figures[f"{key}_means"], figures[f"{key}_timings_s"] = summary_of(out)
    return figures


def command_key(executor: str) -> str:
    """The figures' key prefix of jobs.importance's wall with ``--executor executor``."""
    return "importance_command" if executor == "ray" else f"importance_{executor}_command"


def importance_executors(value: str) -> list[str]:
    """``--importance-executors``: distinct names among ray and local, in the order given."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names or any(name not in ("ray", "local") for name in names) or len(set(names)) < len(names):
        raise InvalidParameterError("--importance-executors", "must name ray, local or both, once each", value)
    return names


def sklearn_comparison(args, model_path: str, sample_path: str, labels_path: str, figures: dict) -> dict:
    """scikit-learn's permutation_importance as a subprocess: its wall, the wall-to-wall ratio, the means."""
    compared = {"sklearn_s": None, "sklearn_call_s": None, "sklearn_n_jobs": None, "sklearn_means": None,
                "sklearn_wall_to_wall": None, "sklearn_wall_to_wall_local": None, "means_relative_diffs": None,
                "means_max_relative_diff": None}
    if args.skip_sklearn:
        return compared
    wall_s, done = python_module("jobs.benchmark", "--sklearn-run", model_path, sample_path, labels_path,
                                 "--repeats", str(args.repeats), "--sklearn-jobs", str(args.sklearn_jobs),
                                 "--seed", str(args.seed))
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    compared.update(sklearn_s=wall_s, sklearn_call_s=measured["seconds"], sklearn_n_jobs=args.sklearn_jobs,
                    sklearn_means=measured["means"])
    ran = [executor for executor in ("ray", "local") if figures.get(f"{command_key(executor)}_s") is not None]
    for executor in ran:
        ratio = "sklearn_wall_to_wall" if executor == "ray" else f"sklearn_wall_to_wall_{executor}"
        compared[ratio] = wall_s / figures[f"{command_key(executor)}_s"]
    if ran:  # the means of the first run (the two give the same bit for bit)
        ours = figures[f"{command_key(ran[0])}_means"]
        # Relative to the largest mean: an irrelevant feature's mean is near 0, and its relative difference noise.
        scale = max(abs(mean) for mean in ours)
        diffs = [abs(theirs - mine) / scale for theirs, mine in zip(measured["means"], ours)]
        compared.update(means_relative_diffs=diffs, means_max_relative_diff=max(diffs))
    return compared


def targets(f: dict) -> list[dict]:
    """Issue 14's targets: {"name", "measured", "target", "met"}; measured None where skipped."""
    rows = [
        ("jobs.seed_importance with its defaults, wall s", f["seed_command_s"], "<=", 12.0),
        (f"jobs.importance, {f['samples']} series x {f['repeats']} repeats, permute, MSE increase, wall s",
         f["importance_command_s"], "<=", 12.0),
        ("the same, jobs.importance --executor local, wall s", f.get("importance_local_command_s"), "<=", 12.0),
        (f"scikit-learn wall / jobs.importance wall (n_jobs={f['sklearn_n_jobs']})", f["sklearn_wall_to_wall"],
         ">=", 5.0),
        (f"scikit-learn wall / jobs.importance --executor local wall (n_jobs={f['sklearn_n_jobs']})",
         f.get("sklearn_wall_to_wall_local"), ">=", 5.0),
        ("largest difference of the means, scikit-learn vs rnnimp, / largest mean",
         f["means_max_relative_diff"], "<=", 0.02),
        (f"evaluation phase / ({f['workers']} x one-thread limit of the workers' forward)", f["efficiency"],
         ">=", 0.9),
        (f"evaluation phase / ({f['workers']} x best one-thread plain tf.function(model(x)))",
         f["eval_vs_plain_tf"], ">=", 2.0),
    ]
    for name, kind in (f.get("kinds") or {}).items():
        rows.append((f"forward speed-up over model(x) under XLA, one thread: {name} [{kind['forward']}]",
                     kind["speedup"], ">=", 1.5))
    rows.append((f"units phase, --per-step, {f['workers']} workers, s", f["per_step_units_s"], "<=", 2.0))
    return [{"name": name, "measured": measured, "target": f"{relation} {bound:g}",
             "met": None if measured is None else (measured <= bound if relation == "<=" else measured >= bound)}
            for name, measured, relation, bound in rows]


def format_targets(f: dict) -> str:
    lines = ["targets (issue 14):", f"  {'':<100} {'measured':>9} {'target':>8}"]
    for row in f["targets"]:
        measured = "skipped" if row["measured"] is None else f"{row['measured']:.3g}"
        verdict = "" if row["met"] is None else ("met" if row["met"] else "NOT met")
        if row["measured"] is None and "forward speed-up" in row["name"]:
            measured, verdict = "n/a", "n/a (not supported yet)"
        lines.append(f"  {row['name']:<100} {measured:>9} {row['target']:>8}  {verdict}")
    return "\n".join(lines)


def format_table(f: dict, passes: int, plain_passes: int) -> str:
    steps = f["samples"] * f["time_steps"]
    best = f["plain_tf_best"]
    rows = [
        ("(b) model(x) forward limit (tf.function, XLA), all threads",
         passes * steps / f["keras_all_threads_steps_per_s"], f["keras_all_threads_steps_per_s"]),
        ("(b) model(x) forward limit (tf.function, XLA), one thread",
         passes * steps / f["keras_one_thread_steps_per_s"], f["keras_one_thread_steps_per_s"]),
        (f"(b) plain TF, tf.function(model(x)), one thread, best: {best.replace('_', ' ')}",
         passes * steps / f["plain_tf_one_thread_steps_per_s"], f["plain_tf_one_thread_steps_per_s"]),
        (f"(b) rnnimp's forward ({f['forward']}) limit, all threads", passes * steps / f["all_threads_steps_per_s"],
         f["all_threads_steps_per_s"]),
        (f"(b) rnnimp's forward ({f['forward']}) limit, one thread", passes * steps / f["one_thread_steps_per_s"],
         f["one_thread_steps_per_s"]),
        (f"(b) rnnimp's forward limit, {f['workers']} one-thread processes at once",
         passes * steps / f["concurrent_limit_steps_per_s"], f["concurrent_limit_steps_per_s"]),
        (f"(c) rnnimp on {f['workers']} Ray workers (baseline + units)", f["rnnimp_eval_s"], f["rnnimp_steps_per_s"]),
    ]
    if f["plain_steps_per_s"] is not None:
        rows.insert(0, (f"(a) plain loop, model.predict (timed {plain_passes} passes, scaled)", f["plain_scaled_s"],
                        f["plain_steps_per_s"]))
    plain = f["plain_steps_per_s"]
    lines = [f"{f['samples']} series x {f['time_steps']} steps, {f['features']} features x {f['repeats']} repeats"
             f" = {passes} perturbed passes (walls of (b) scaled to {passes} passes)",
             f"{'':<74} {'wall s':>9} {'Msteps/s':>9} {'vs (a)':>8}"]
    for name, seconds, rate in rows:
        versus = f"{rate / plain:>7.1f}x" if plain else f"{'':>8}"
        lines.append(f"{name:<74} {seconds:>9.2f} {rate / 1e6:>9.2f} {versus}")
    lines.append("plain TF, one thread, seconds per pass: " + ", ".join(
        f"{key.replace('_', ' ')} {seconds:.3f}" for key, seconds in f["plain_tf_one_thread_s"].items()))
    lines += [
        f"efficiency of (c): {f['efficiency']:.1%} of {f['workers']} x the one-thread limit of rnnimp's forward;"
        f" {f['efficiency_vs_keras_limit']:.1%} of {f['workers']} x model(x)'s under XLA;"
        f" {f['eval_vs_plain_tf']:.2f}x {f['workers']} x plain TF's best",
        f"{f['workers']} one-thread processes at once run {f['cores_scaling']:.2f}x one alone"
        f" ({', '.join(f'{rate / 1e6:.2f}' for rate in f['concurrent_steps_per_s'])} Msteps/s each);"
        f" (c) is {f['efficiency_vs_concurrent_limit']:.1%} of them together",
        f"fixed overhead of the in-process run (all but training and evaluation): {f['fixed_overhead_s']:.2f} s"
        f" (start Ray {f['start_ray_s']:.2f} s)",
        f"training in the benchmark, one compiled program per epoch, beside the workers' start-up: {f['train_fast_s']:.2f} s,"
        f" loss {f['train_fast_loss']:.4f}",
    ]
    if f["per_step_units_s"] is not None:
        lines.append(f"per-step map on the same warm workers: units phase {f['per_step_units_s']:.2f} s"
                     f" for {f['per_step_cells']} (target, step, repeat) cells")
    if f["seed_command_s"] is not None:
        lines.append(f"python -m jobs.seed_importance (defaults), start to exit: {f['seed_command_s']:.2f} s;"
                     f" means {', '.join(f'{m:.4f}' for m in f['seed_command_means'])}")
    for executor in ("ray", "local"):
        key = command_key(executor)
        if f.get(f"{key}_s") is not None:
            phases = ", ".join(f"{k} {v:.2f}" for k, v in f[f"{key}_timings_s"].items())
            lines.append(f"python -m jobs.importance --executor {executor} (saved model, permute, MSE increase),"
                         f" start to exit: {f[f'{key}_s']:.2f} s; its phases, s: {phases}")
    if f["sklearn_s"] is not None:
        lines.append(f"scikit-learn permutation_importance (n_jobs={f['sklearn_n_jobs']}), start to exit:"
                     f" {f['sklearn_s']:.2f} s, of which the call {f['sklearn_call_s']:.2f} s;"
                     f" means {', '.join(f'{m:.5f}' for m in f['sklearn_means'])}")
    if f["means_relative_diffs"] is not None:
        ours = f["importance_command_means"] or f["importance_local_command_means"]
        lines.append(f"  rnnimp's means {', '.join(f'{m:.5f}' for m in ours)};"
                     f" differences / largest mean {', '.join(f'{d:.2%}' for d in f['means_relative_diffs'])}")
    for name, kind in (f["kinds"] or {}).items():
        head = f"forward, one thread, {name:<20} [{kind['forward']}]: model(x) XLA {kind['keras_xla_s']:.4f} s"
        if kind["speedup"] is None:
            lines.append(f"{head}; rnnimp n/a (not supported yet: {kind.get('error', '')[:100]})")
        else:
            lines.append(f"{head}, rnnimp {kind['rnnimp_s']:.4f} s, {kind['speedup']:.2f}x,"
                         f" max |diff| {kind['max_abs_diff']:.1e}")
    if "train_plain_s" in f:
        lines.append(f"side by side, workers stopped: one compiled program per epoch {f['train_fast_idle_s']:.2f} s,"
                     f" loss {f['train_fast_idle_loss']:.4f}; plain fit {f['train_plain_s']:.2f} s,"
                     f" loss {f['train_plain_loss']:.4f} ({f['train_speedup']:.1f}x slower)")
    lines.append(f"peak RSS: rnnimp driver {f['driver_peak_rss_bytes'] / GIB:.2f} GiB (sample {f['sample_bytes'] / GIB:.2f} GiB),"
                 f" largest worker {f['worker_peak_rss_bytes'] / GIB:.2f} GiB; whole benchmark process"
                 f" {f['benchmark_process_peak_rss_bytes'] / GIB:.2f} GiB")
    return "\n".join(lines)


def rounded(value):
    """``value`` with every float rounded to 6 significant digits, for the JSON line."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


if __name__ == "__main__":
    sys.exit(cli.run(main))
