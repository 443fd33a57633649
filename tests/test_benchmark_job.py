"""The benchmark job end to end on a small sample: what it prints, not how fast it is."""

import functools
import json
import re
import time

import pytest

from jobtools import REPO, call_job, run_job

pytestmark = pytest.mark.slow

GIB = 1024**3


def test_benchmark_prints_its_table_and_a_json_line(monkeypatch):
    from rnnimp import reference

    # In this process, with 200 training steps per epoch instead of 1000 (the job has no option for it):
    # the benchmark trains three times, which would otherwise be most of this test's time.
    monkeypatch.setattr(reference, "train_model", functools.partial(reference.train_model, steps_per_epoch=200))
    monkeypatch.chdir(REPO)  # the one-thread limit runs `python -m jobs.benchmark` in a subprocess
    started = time.perf_counter()
    done = call_job("jobs.benchmark", "--samples", "3000", "--repeats", "2", "--num-cpus", "2",
                    "--plain-passes", "1", "--epochs", "1", "--eval-batch-size", "512", "--shard-size", "1024",
                    "--compare-training")
    wall_s = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    *table, last = done.stdout.strip().splitlines()
    figures = json.loads(last)
    assert (figures["samples"], figures["repeats"], figures["workers"]) == (3000, 2, 2)
    assert figures["forward"] == "fused-lstm"
    assert figures["sample_bytes"] == 3000 * 10 * 3 * 4  # the float32 evaluation sample
    # The phases it times are parts of this call, each measured once.
    phases = ("start_ray_s", "train_fast_s", "rnnimp_eval_s", "train_fast_idle_s", "train_plain_s")
    assert all(figures[phase] > 0 for phase in phases)
    assert sum(figures[phase] for phase in phases) < wall_s
    assert figures["fixed_overhead_s"] >= figures["start_ray_s"]
    # A limit is an upper bound: the plain loop (predict in batches of 32, no XLA, plus the perturbation) runs
    # far below the compiled forward pass alone (about 20x on this machine).
    assert figures["plain_steps_per_s"] < figures["keras_all_threads_steps_per_s"]
    assert figures["plain_steps_per_s"] < figures["all_threads_steps_per_s"]
    # Peak resident sizes in bytes (ru_maxrss is in KiB): processes that hold TensorFlow, and the whole
    # benchmark's peak is at least the driver's earlier one.
    for rss in ("worker_peak_rss_bytes", "driver_peak_rss_bytes"):
        assert 0.1 * GIB < figures[rss] < 64 * GIB
    assert figures["benchmark_process_peak_rss_bytes"] >= figures["driver_peak_rss_bytes"]
    # The same batches and number of steps, fast or plain: the same final loss.
    assert abs(figures["train_fast_idle_loss"] - figures["train_plain_loss"]) < 0.02
    assert figures["train_fast_idle_loss"] == figures["train_fast_loss"]
    # The table shows the JSON's figures.
    text = "\n".join(table)
    assert "(a) plain loop" in text and "(c) rnnimp on 2 Ray workers" in text
    row = re.search(r"\(c\) rnnimp on 2 Ray workers \(baseline \+ units\)\s+([\d.]+)\s+([\d.]+)", text)
    assert float(row[1]) == pytest.approx(figures["rnnimp_eval_s"], abs=0.006)
    assert float(row[2]) == pytest.approx(figures["rnnimp_steps_per_s"] / 1e6, abs=0.006)
    efficiency = re.search(r"efficiency of \(c\): ([\d.]+)% .*; ([\d.]+)% of 2 x model\(x\)'s", text)
    assert float(efficiency[1]) == pytest.approx(100 * figures["efficiency"], abs=0.06)
    assert float(efficiency[2]) == pytest.approx(100 * figures["efficiency_vs_keras_limit"], abs=0.06)
    assert f"({figures['train_speedup']:.1f}x slower)" in text


def test_benchmark_refuses_a_bad_size_in_one_line():
    done = run_job("jobs.benchmark", "--samples", "0")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--samples" in done.stderr
    assert done.stdout == ""


def test_plain_loop_model_does_not_inherit_the_fast_training_settings():
    import keras
    import numpy as np

    from rnnimp import reference
    from jobs.benchmark_tools import plainly_compiled

    model = reference.build_model(0)
    model.compile(optimizer="adam", loss="binary_crossentropy", jit_compile=True, steps_per_execution=100)
    plain = plainly_compiled(model)
    assert plain.jit_compile is False and plain.steps_per_execution == 1
    assert model.jit_compile is True and model.steps_per_execution == 100
    sample = reference.evaluation_sample(0, 50)
    np.testing.assert_array_equal(np.asarray(plain(sample)), np.asarray(model(sample)))
    assert isinstance(plain, keras.Sequential)
