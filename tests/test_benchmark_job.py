"""The benchmark job end to end on a small sample: what it prints and how its figures relate, not how fast it is."""

import json

import numpy as np
import pytest

from jobs.benchmark_tools import KIND_NAMES
from jobtools import call_job

SMALL = ("--samples", "3000", "--repeats", "3", "--num-cpus", "2", "--plain-passes", "1", "--epochs", "1",
         "--eval-batch-size", "512", "--shard-size", "1024", "--concurrent-window-s", "0.5")
PLAIN_TF_CONFIGURATIONS = {f"{batch}_{route}" for batch in ("4096", "16384", "whole") for route in ("graph", "xla")}
# Three of the kinds (each kind's forward against model(x) is tested in tests/test_lstm.py): the fused LSTM
# stack, a masked one and a model that falls back to model(x).
KINDS = ("LSTM Sequential", "masked LSTM", "two inputs + static")


def assert_targets_consistent(figures: dict, table: str) -> None:
    """Every target row: met is None exactly when not measured, else the measured value against the bound."""
    for row in figures["targets"]:
        relation, bound = row["target"].split()
        if row["measured"] is None:
            assert row["met"] is None
        else:
            within = row["measured"] <= float(bound) if relation == "<=" else row["measured"] >= float(bound)
            assert row["met"] == within
            assert ("NOT met" if not row["met"] else "met") in next(
                line for line in table.splitlines() if line.strip().startswith(row["name"]))


@pytest.mark.slow
def test_benchmark_measures_every_target_beside_its_bound():
    done = call_job("jobs.benchmark", *SMALL, "--per-step-series", "60", "--per-step-repeats", "2",
                    "--kinds-series", "2048", "--kinds", ",".join(KINDS), "--sklearn-jobs", "1",
                    "--skip-seed-command", "--importance-executors", "local")  # Ray's run: the same code, another flag
    assert done.returncode == 0, done.stderr[-3000:]
    *table, last = done.stdout.strip().splitlines()
    text = "\n".join(table)
    figures = json.loads(last)
    assert (figures["samples"], figures["repeats"], figures["workers"]) == (3000, 3, 2)
    assert figures["forward"] == "fused-lstm"
    # The whole command includes its units phase and every other phase it reports (phases may overlap).
    timings = figures["importance_local_command_timings_s"]
    assert figures["importance_local_command_s"] > timings["units"] > 0
    assert figures["importance_local_command_s"] > max(timings.values()) and "start_ray" not in timings
    assert "python -m jobs.importance --executor local (saved model" in text
    assert figures["seed_command_s"] is None and figures["seed_command_means"] is None  # skipped
    assert figures["importance_command_s"] is None and figures["sklearn_wall_to_wall"] is None  # Ray's: not asked
    # scikit-learn: its process wall covers its call; the ratio is wall to wall; the means measure the same thing.
    assert figures["sklearn_s"] > figures["sklearn_call_s"] > 0 and figures["sklearn_n_jobs"] == 1
    assert figures["sklearn_wall_to_wall_local"] == pytest.approx(
        figures["sklearn_s"] / figures["importance_local_command_s"], rel=1e-4)
    ours, theirs = np.array(figures["importance_local_command_means"]), np.array(figures["sklearn_means"])
    assert ours.shape == theirs.shape == (3,)
    assert np.argmax(ours) == np.argmax(theirs) and figures["means_max_relative_diff"] < 0.25
    assert figures["means_max_relative_diff"] == pytest.approx(max(figures["means_relative_diffs"]), rel=1e-4)
    # Plain TensorFlow: six configurations, the best is the fastest of them.
    plain_tf = figures["plain_tf_one_thread_s"]
    assert set(plain_tf) == PLAIN_TF_CONFIGURATIONS and figures["plain_tf_best"] == min(plain_tf, key=plain_tf.get)
    steps = 3000 * 10
    assert figures["plain_tf_one_thread_steps_per_s"] == pytest.approx(steps / min(plain_tf.values()), rel=1e-4)
    assert figures["eval_vs_plain_tf"] == pytest.approx(
        figures["rnnimp_steps_per_s"] / (2 * figures["plain_tf_one_thread_steps_per_s"]), rel=1e-4)
    assert figures["efficiency"] == pytest.approx(
        figures["rnnimp_steps_per_s"] / (2 * figures["one_thread_steps_per_s"]), rel=1e-4)
    # The concurrent limit: one figure per process (--num-cpus of them), what they ran together, against one alone.
    rates = figures["concurrent_steps_per_s"]
    assert len(rates) == 2 and min(rates) > 0
    assert figures["concurrent_limit_steps_per_s"] == pytest.approx(sum(rates), rel=1e-4)
    assert figures["cores_scaling"] == pytest.approx(sum(rates) / figures["one_thread_steps_per_s"], rel=1e-4)
    assert figures["efficiency_vs_concurrent_limit"] == pytest.approx(
        figures["rnnimp_steps_per_s"] / sum(rates), rel=1e-4)
    assert "(b) rnnimp's forward limit, 2 one-thread processes at once" in text
    assert "2 one-thread processes at once run" in text
    # Model kinds: each timed against model(x); the fused LSTM stack agrees with it to float32 rounding.
    kinds = figures["kinds"]
    assert tuple(kinds) == KINDS
    assert kinds["LSTM Sequential"]["forward"] == "fused-lstm" and kinds["LSTM Sequential"]["max_abs_diff"] < 1e-4
    assert kinds["masked LSTM"]["forward"] == "fused-rnn-masked"
    for name, kind in kinds.items():
        assert kind["keras_xla_s"] > 0
        if kind["speedup"] is None:
            assert kind["error"] and "n/a (not supported yet" in text
        else:
            assert kind["speedup"] == pytest.approx(kind["keras_xla_s"] / kind["rnnimp_s"], rel=1e-3)
    # Per-step case: one cell per (target, step, repeat).
    assert figures["per_step_units_s"] > 0 and figures["per_step_cells"] == 3 * 10 * 2
    assert figures["plain_steps_per_s"] > 0 and figures["speedup_over_plain"] > 0
    assert len(figures["targets"]) == 8 + len(KINDS) + 1
    assert_targets_consistent(figures, text)
    assert "(a) plain loop" in text and "(c) rnnimp on 2 Ray workers" in text and "targets (issue 14):" in text


@pytest.mark.slow
def test_benchmark_skips_the_expensive_parts_and_says_so():
    done = call_job("jobs.benchmark", *SMALL, "--num-cpus", "1", "--skip-commands", "--skip-sklearn", "--skip-kinds",
                    "--skip-per-step", "--skip-plain-loop")  # one worker is enough to show what is skipped
    assert done.returncode == 0, done.stderr[-3000:]
    *table, last = done.stdout.strip().splitlines()
    figures = json.loads(last)
    for skipped in ("seed_command_s", "importance_command_s", "importance_local_command_s", "sklearn_s",
                    "sklearn_wall_to_wall", "sklearn_wall_to_wall_local", "means_max_relative_diff", "kinds",
                    "per_step_units_s", "plain_steps_per_s"):
        assert skipped in figures and figures[skipped] is None, skipped
    assert figures["efficiency"] > 0 and figures["eval_vs_plain_tf"] > 0  # always measured
    assert len(figures["concurrent_steps_per_s"]) == 1 and figures["cores_scaling"] > 0
    measured = [row for row in figures["targets"] if row["measured"] is not None]
    assert [row["name"].split(" / ")[0] for row in measured] == ["evaluation phase"] * 2
    assert "(a) plain loop" not in "\n".join(table)
    assert "\n".join(table).count("skipped") == 7
    assert_targets_consistent(figures, "\n".join(table))


@pytest.mark.parametrize("option", [("--samples", "0"), ("--concurrent-window-s", "0")])
def test_benchmark_refuses_a_bad_size_in_one_line(option):
    done = call_job("jobs.benchmark", *option)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and option[0] in done.stderr
    assert done.stdout == ""


def test_benchmark_refuses_an_unknown_model_kind_in_one_line():
    done = call_job("jobs.benchmark", "--kinds", "GRU,LSTMish", ray=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == ("error: --kinds: must name model kinds among " + ", ".join(KIND_NAMES)
                                   + ", got 'GRU,LSTMish'")


def test_the_kind_names_are_the_benchmark_models_in_their_order():
    from jobs.benchmark import chosen_kinds
    from jobs.benchmark_tools import kind_models

    assert tuple(kind_models(0)) == KIND_NAMES
    assert chosen_kinds("two inputs + static, GRU") == ("GRU", "two inputs + static")


def test_benchmark_without_scikit_learn_says_how_to_install_it(monkeypatch):
    import sys

    from rnnimp import distributed

    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn now raises ImportError
    monkeypatch.setattr(distributed, "connect", lambda *args: pytest.fail("started Ray without scikit-learn"))
    done = call_job("jobs.benchmark", "--samples", "10")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0
    assert "pip install 'scikit-learn>=1.4'" in done.stderr and "--skip-sklearn" in done.stderr


class _FirstFeatureModel:
    """Stands for a Keras model in sklearn's estimator wrapper: predicts (series, time) from feature 0 only."""

    def __init__(self, output):
        self.output = output
        self.batch_sizes = []

    def predict(self, x, batch_size, verbose):
        self.batch_sizes.append(batch_size)
        return self.output(x)


def test_sklearn_permutes_each_features_whole_trajectory_between_series():
    pytest.importorskip("sklearn")
    from jobs.benchmark_tools import sklearn_permutation_importance

    rng = np.random.default_rng(0)
    sample = rng.random((400, 10, 3), dtype=np.float32)
    sample[:, :, 0] = rng.random((400, 1), dtype=np.float32)  # feature 0 constant along each trajectory
    # Differences along time: zero for any series' whole trajectory, not for steps mixed from several series.
    steps_model = _FirstFeatureModel(lambda x: np.diff(x[:, :, 0], axis=1))
    steps = sklearn_permutation_importance(steps_model, sample, np.zeros((400, 9), np.float32), 4, 1, 0)
    assert steps["means"] == [0.0, 0.0, 0.0] and set(steps_model.batch_sizes) == {8192}
    # The values themselves: only feature 0 matters, and moving trajectories between series increases the MSE.
    values = sklearn_permutation_importance(_FirstFeatureModel(lambda x: x[:, :, 0]), sample, sample[:, :, 0],
                                            4, 1, 0)
    assert values["means"][0] > 0.05 and values["means"][1:] == [0.0, 0.0] and values["seconds"] > 0


def test_targets_compare_each_figure_with_its_bound_and_mark_what_is_missing():
    from jobs.benchmark import format_targets, targets

    figures = {"samples": 10, "repeats": 2, "workers": 2, "sklearn_n_jobs": 2, "seed_command_s": 11.0,
               "importance_command_s": 12.5, "sklearn_wall_to_wall": None, "means_max_relative_diff": 0.02,
               "efficiency": 0.89, "eval_vs_plain_tf": 2.0, "per_step_units_s": None,
               "kinds": {"GRU": {"forward": "fused-rnn", "speedup": 1.6},
                         "two inputs + static": {"forward": "keras-xla", "speedup": None}}}
    figures.update(importance_local_command_s=9.0, sklearn_wall_to_wall_local=5.5)
    rows = targets(figures)
    assert [row["met"] for row in rows] == [True, False, True, None, True, True, False, True, True, None, None]
    figures["targets"] = rows
    text = format_targets(figures)
    assert "n/a (not supported yet)" in text and text.count("NOT met") == 2 and text.count("skipped") == 2


def test_plain_tf_batch_sizes_above_the_sample_size_are_timed_once_as_the_whole_sample(monkeypatch):
    from jobs import benchmark_tools as tools

    timed = []

    def fake_timing(model, sample, batch_size, jit_compile):
        timed.append((batch_size, jit_compile))
        return batch_size + 0.5 * jit_compile

    monkeypatch.setattr(tools, "tf_function_seconds_per_pass", fake_timing)
    small = tools.best_plain_tf_seconds_per_pass(None, np.zeros((3000, 1, 1), np.float32))
    assert timed == [(3000, False), (3000, True)]
    assert small == {f"{label}_{route}": 3000 + 0.5 * (route == "xla")
                     for label in ("4096", "16384", "whole") for route in ("graph", "xla")}
    timed.clear()
    large = tools.best_plain_tf_seconds_per_pass(None, np.zeros((20000, 1, 1), np.float32))
    assert timed == [(batch, jit) for batch in (4096, 16384, 20000) for jit in (False, True)]
    assert large["whole_xla"] == 20000.5 and large["4096_graph"] == 4096


def test_concurrent_limit_says_why_a_process_failed(tmp_path):
    from jobs.benchmark import concurrent_limit

    sample = tmp_path / "sample.npy"
    np.save(sample, np.zeros((8, 10, 3), np.float32))
    with pytest.raises(RuntimeError, match="the concurrent forward limit failed") as raised:
        concurrent_limit(str(tmp_path / "missing.keras"), str(sample), 4, processes=2, window_s=0.1)
    assert "missing.keras" in str(raised.value)
