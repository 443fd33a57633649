"""The benchmark job end to end on a small sample: what it prints, not how fast it is."""

import json

import pytest

from jobtools import run_job

pytestmark = pytest.mark.slow


def test_benchmark_prints_its_table_and_a_json_line():
    done = run_job("jobs.benchmark", "--samples", "3000", "--repeats", "2", "--num-cpus", "2",
                   "--plain-passes", "1", "--epochs", "1", "--eval-batch-size", "512", "--shard-size", "1024",
                   "--compare-training")
    assert done.returncode == 0, done.stderr[-3000:]
    *table, last = done.stdout.strip().splitlines()
    figures = json.loads(last)
    assert (figures["samples"], figures["repeats"], figures["workers"]) == (3000, 2, 2)
    assert figures["forward"] == "fused-lstm"
    for rate in ("rnnimp_steps_per_s", "plain_steps_per_s", "one_thread_steps_per_s", "keras_one_thread_steps_per_s"):
        assert figures[rate] > 0
    assert figures["efficiency"] == pytest.approx(
        figures["rnnimp_steps_per_s"] / (2 * figures["one_thread_steps_per_s"]), abs=1e-4)  # JSON rounds to 4 places
    assert figures["worker_peak_rss_bytes"] > 0 and figures["driver_peak_rss_bytes"] > 0
    # The same batches and number of steps, fast or plain: the same final loss.
    assert abs(figures["train_fast_idle_loss"] - figures["train_plain_loss"]) < 0.02
    assert figures["train_fast_idle_loss"] == figures["train_fast_loss"]
    assert figures["train_speedup"] > 0
    text = "\n".join(table)
    assert "(a) plain loop" in text and "(c) rnnimp on 2 Ray workers" in text and "efficiency of (c)" in text


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
