"""jobs.seed_importance from the command line: help, bad input, a small real run."""

import pyarrow.parquet as pq
import pytest

from jobtools import call_job
from rnnimp.output import read_metadata

SMALL = ["--epochs", "1", "--steps-per-epoch", "100", "--repeats", "3", "--samples", "100", "--num-cpus", "1", "--quiet"]


def test_help_documents_every_option():
    done = call_job("jobs.seed_importance", "--help")  # argparse's help, in this process (no TensorFlow to import)
    assert done.returncode == 0
    for option in ["--out", "--samples", "--repeats", "--noise-scale", "--seed", "--confidence", "--epochs",
                   "--steps-per-epoch", "--train-batch-size", "--model", "--num-cpus", "--connect-timeout",
                   "--halfwidth-relative"]:
        assert option in done.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--samples", "0"], "--samples: must be a positive integer, got 0"),
        (["--repeats", "-2"], "--repeats: must be a positive integer, got -2"),
        (["--repeats", "1"], "--repeats: must be at least 2 for a confidence interval, got 1"),
        (["--epochs", "0"], "--epochs: must be a positive integer, got 0"),
        (["--noise-scale", "0"], "--noise-scale: must be a finite number > 0, got 0.0"),
        (["--noise-scale", "nan"], "--noise-scale: must be a finite number > 0, got nan"),
        (["--confidence", "1.2"], "--confidence: must be strictly between 0 and 1, got 1.2"),
        (["--seed", "-1"], "--seed: must be a non-negative integer, got -1"),
        (["--samples", "300", "--eval-batch-size", "64", "--shard-size", "100"],
         "--shard-size: must be a multiple of --eval-batch-size (64), got 100"),
        (["--group", "g=x1,x7"], "--group: must name known features (x1, x2, x3) or indexes 0..2, got 'x7'"),
        (["--target-halfwidth", "0.01", "--max-repeats", "3"], "--max-repeats: must be at least --repeats (30), got 3"),
        (["--samples", "ten"], "argument --samples: invalid int value: 'ten'"),
        (["--model", "missing.keras"], "--model: must be an existing readable file, got 'missing.keras'"),
        (["--model", "weights.h5"], "--model: must be a .keras file, got 'weights.h5'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, args, message):
    out = tmp_path / "out"
    done = call_job("jobs.seed_importance", "--out", str(out), *args, ray=False)
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_corrupt_model_file_is_refused(tmp_path):
    model = tmp_path / "broken.keras"
    model.write_bytes(b"this is not a zip archive")
    done = call_job("jobs.seed_importance", "--out", str(tmp_path / "out"), "--model", str(model), ray=False)
    assert done.returncode == 2
    assert "--model: must be a valid Keras model file" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_small_run_trains_writes_results_and_its_model_gives_the_same_effects(tmp_path):
    from rnnimp import reference, sensitivity_importance
    from rnnimp.modelio import load_model

    out = tmp_path / "run"
    done = call_job("jobs.seed_importance", "--out", str(out), *SMALL)  # in this process: Ray, training, writing
    assert done.returncode == 0, done.stderr
    assert "embedded local Ray (1 CPU)" in done.stdout and "trained the reference LSTM" in done.stdout
    assert "95% t-interval" in done.stdout and f"wrote summary: {out}/summary.parquet" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "comparisons.parquet", "effects.parquet", "effects.png", "model.keras", "rank_probabilities.parquet",
        "summary.parquet"]
    effects = pq.read_table(out / "effects.parquet").replace_schema_metadata(None)
    assert effects.num_rows == 9
    metadata = read_metadata(str(out / "summary.parquet"))
    assert {"start_ray", "train", "evaluate"} <= set(metadata["timings_s"])
    assert metadata["job"]["epochs"] == 1 and metadata["job"]["steps_per_epoch"] == 100

    # Another configuration into the same folder is refused, naming what differs.
    refused = call_job("jobs.seed_importance", "--out", str(out), *SMALL[:-5], "--repeats", "4", "--samples", "100",
                       ray=False)
    assert refused.returncode == 2
    assert "differs in configuration.n_repeats" in refused.stderr and "--overwrite" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    # The saved model is the trained one: in this process, without Ray, it gives the run's effects bit for bit.
    again = sensitivity_importance(load_model(str(out / "model.keras")), reference.evaluation_sample(0, 100),
                                   n_repeats=3, random_state=0, feature_names=reference.FEATURE_NAMES)
    assert again.effects_table().replace_schema_metadata(None).equals(effects)
