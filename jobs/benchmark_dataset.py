"""``jobs.benchmark --dataset DIR``: a run from a partitioned Parquet dataset against the in-memory path.

Writes the reference evaluation sample (``--samples`` series) as a dataset
under DIR first if DIR does not exist (in a subprocess, in chunks, so this
process never holds it), trains the reference model, then runs
``--repeats`` repeats of noise importance from DIR on a local Ray of
``--num-cpus`` workers, and (unless ``--skip-in-memory``) the same run on
the sample loaded in memory. Reports both throughputs, their ratio, the
driver's peak RSS after the dataset run (before anything loads the sample),
the largest worker's peak RSS and the workers' shard cache use. The last
line is JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

GIB = 1024**3
CHUNK_SERIES = 1 << 20  # series drawn and written per step by the writer


def add_options(add) -> None:
    """The dataset benchmark's options, added to jobs.benchmark's parser (``add = parser.add_argument``)."""
    add("--dataset", default=None, metavar="DIR",
        help="benchmark a run from the partitioned Parquet dataset DIR (written first if absent, from --samples "
             "series) against the in-memory path, and nothing else")
    add("--dataset-series-per-file", type=int, default=65536,
        help="with --dataset: series per Parquet file when writing DIR (default: %(default)s)")
    add("--shard-cache-mib", type=int, default=1024,
        help="with --dataset: each worker's shard cache (default: %(default)s)")
    add("--skip-in-memory", action="store_true", help="with --dataset: skip the in-memory comparison run")
    add("--write-dataset", nargs=4, metavar=("DIR", "SAMPLES", "SEED", "PER_FILE"), help=argparse_suppress())


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def chunks(seed: int, n_series: int):
    """(start, values (chunk, 10, 3) float32) of the reference evaluation sample, drawn chunk after chunk."""
    from rnnimp import reference
    from rnnimp.seeding import Stream, generator

    rng = generator(seed, Stream.EVALUATION_SAMPLE)
    for start in range(0, n_series, CHUNK_SERIES):
        yield start, reference._draw_inputs(rng, min(CHUNK_SERIES, n_series - start))


def write(folder: str, n_series: int, seed: int, series_per_file: int) -> None:
    """Write the sample as a dataset: one sub-folder per chunk, files of ``series_per_file`` series."""
    import numpy as np

    from rnnimp.dataset import write_dataset

    for number, (start, values) in enumerate(chunks(seed, n_series)):
        write_dataset(values, f"{folder}/chunk-{number:05d}", series_per_file,
                      series_ids=np.arange(start, start + len(values)), feature_names=["x1", "x2", "x3"])


def in_memory_sample(seed: int, n_series: int):
    import numpy as np

    return np.concatenate([values for _, values in chunks(seed, n_series)])


def run(args) -> int:
    """The dataset benchmark; prints a table and one JSON line."""
    if args.write_dataset:
        folder, n_series, seed, per_file = args.write_dataset
        write(folder, int(n_series), int(seed), int(per_file))
        return 0
    from rnnimp import validation
    from rnnimp.dataset import DatasetPlan, names_dataset
    from rnnimp.errors import InvalidParameterError

    for name in ("samples", "repeats", "num_cpus", "eval_batch_size", "shard_size", "epochs",
                 "dataset_series_per_file", "shard_cache_mib"):
        validation.positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
    figures: dict = {"samples": args.samples, "repeats": args.repeats, "workers": args.num_cpus,
                     "dataset": args.dataset, "shard_cache_mib": args.shard_cache_mib}
    if not names_dataset(args.dataset):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jobs.benchmark", "--write-dataset", args.dataset, str(args.samples),
                        str(args.seed), str(args.dataset_series_per_file)], check=True)
        figures["write_dataset_s"] = time.perf_counter() - started
    plan = DatasetPlan.open(args.dataset, parameter="--dataset")
    if plan.n_series != args.samples:
        raise InvalidParameterError("--dataset", f"must hold --samples ({args.samples}) series", plan.n_series)
    figures.update(dataset_files=len(plan.files), dataset_bytes=plan.nbytes)

    from rnnimp.modelio import architecture, configure_tensorflow

    configure_tensorflow(None)
    import numpy as np

    from rnnimp import distributed, reference, sensitivity_importance
    from rnnimp.worker import peak_rss_bytes

    distributed.connect(args.num_cpus)
    model = reference.train_model(args.seed, epochs=args.epochs).model
    options = dict(n_repeats=args.repeats, random_state=args.seed, batch_size=args.eval_batch_size,
                   shard_size=args.shard_size)
    steps = (reference.N_FEATURES * args.repeats + 1) * args.samples * reference.TIME_STEPS

    def timed_run(X, **extra) -> tuple:
        executor = distributed.RayExecutor().warm_up(architecture(model), min(args.eval_batch_size, args.samples),
                                                     ((reference.TIME_STEPS, reference.N_FEATURES),))
        try:
            executor.pool.wait_until_ready()  # compiled: the CPU time below is the run's own
            cpu_before = {s["pid"]: s["cpu_s"] for s in executor.worker_stats()}
            result = sensitivity_importance(model, X, executor=executor, **options, **extra)
            stats = executor.worker_stats()
        finally:
            executor.shutdown()
        timings = result.metadata["timings_s"]
        cpu_s = sum(s["cpu_s"] - cpu_before.get(s["pid"], 0.0) for s in stats)
        return result, steps / (timings["baseline"] + timings["units"]), stats, cpu_s

    load = os.getloadavg()[0]

    result, rate, stats, cpu_s = timed_run(args.dataset, shard_cache_mib=args.shard_cache_mib)
    figures.update(
        dataset_steps_per_s=rate, dataset_worker_cpu_s=cpu_s, driver_peak_rss_bytes=peak_rss_bytes(),
        worker_peak_rss_bytes=max(s["peak_rss_bytes"] for s in stats),
        worker_rss_parts_bytes=max(stats, key=lambda s: s["peak_rss_bytes"])["rss_parts_bytes"],
        cache_hits=sum(s["shard_cache"]["hits"] for s in stats),
        cache_misses=sum(s["shard_cache"]["misses"] for s in stats),
        cache_evictions=sum(s["shard_cache"]["evictions"] for s in stats),
        shard_read_s=sum(s["shard_cache"]["read_s"] for s in stats))
    if not args.skip_in_memory:
        sample = in_memory_sample(args.seed, args.samples)
        in_memory, rate, stats, cpu_s = timed_run(sample)
        figures.update(in_memory_steps_per_s=rate, in_memory_worker_cpu_s=cpu_s, in_memory_worker_peak_rss_bytes=max(
            s["peak_rss_bytes"] for s in stats), ratio=figures["dataset_steps_per_s"] / rate,
            cpu_ratio=cpu_s / figures["dataset_worker_cpu_s"],
            identical_effects=bool(np.array_equal(in_memory.effects, result.effects)))
    figures["load_average"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    distributed.shutdown()
    print(format_figures(figures))
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))
    return 0


def format_figures(f: dict) -> str:
    lines = [f"{f['samples']} series x 10 steps x 3 features, {f['repeats']} repeats, {f['workers']} workers; "
             f"dataset {f['dataset']} ({f['dataset_files']} files, {f['dataset_bytes'] / GIB:.2f} GiB as float32)",
             f"from the dataset: {f['dataset_steps_per_s'] / 1e6:.2f} Msteps/s (baseline + units); shard cache "
             f"{f['shard_cache_mib']} MiB per worker: {f['cache_misses']} reads, {f['cache_hits']} hits, "
             f"{f['cache_evictions']} evictions, {f['shard_read_s']:.1f} s reading (all workers)"]
    if "in_memory_steps_per_s" in f:
        lines.append(f"in memory: {f['in_memory_steps_per_s'] / 1e6:.2f} Msteps/s; dataset / in-memory "
                     f"{f['ratio']:.2f} (target >= 0.8); effects identical: {f['identical_effects']}")
        lines.append(f"workers' CPU time in the run: {f['dataset_worker_cpu_s']:.1f} s from the dataset, "
                     f"{f['in_memory_worker_cpu_s']:.1f} s in memory (in-memory / dataset {f['cpu_ratio']:.2f}: "
                     f"the throughput ratio without the other processes' load)")
    lines.append(f"load average (1 min) before / after: {f['load_average'][0]} / {f['load_average'][1]}")
    lines.append(f"peak RSS after the dataset run: driver {f['driver_peak_rss_bytes'] / GIB:.2f} GiB, largest "
                 f"worker {f['worker_peak_rss_bytes'] / GIB:.2f} GiB (target <= 2 GiB)")
    parts = f["worker_rss_parts_bytes"]
    if parts:
        lines.append("that worker's resident memory at the end: " + ", ".join(
            f"{name.replace('_', ' ')} {value / GIB:.2f} GiB" for name, value in parts.items())
            + " (shared memory: object-store pages it read, shared by the node's processes)")
    return "\n".join(lines)
