"""The catalogue of options: what it derives (CLI, configuration, merge keys) and how errors name options."""

import dataclasses
import re

import numpy as np
import pytest

from conftest import linear_lstm_free_model
from jobtools import call_job
from rnnimp import InvalidParameterError, cli, sensitivity_importance
from rnnimp.options import REPEAT_KEYS, Execution, Options, catalogue, prepare, spec_of

# The configuration keys runs have recorded so far: checkpoints, --out checks and merges compare them.
CONFIGURATION_KEYS = {
    "perturbation", "scales", "ablate_values", "metric", "loss", "n_repeats", "first_repeat", "noise_scale",
    "noise_relative", "groups", "per_step", "resample", "confidence", "interval", "target_halfwidth", "relative",
    "max_repeats", "wave_repeats", "n_samples", "time_steps", "n_features", "feature_names", "batch_size",
    "shard_size", "jit_compile",
}


@pytest.fixture(scope="module")
def model():
    return linear_lstm_free_model([1.0, -3.0, 0.0], time_steps=4)


@pytest.fixture(scope="module")
def sample():
    return np.random.default_rng(0).random((120, 4, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def files(model, sample, tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    model.save(folder / "model.keras")
    np.save(folder / "data.npy", sample)
    return folder


def test_the_configuration_keeps_its_keys_and_the_merge_keys_their_names(model, sample):
    request = prepare(model, sample, options=Options(n_repeats=3))
    assert set(request.configuration) == CONFIGURATION_KEYS
    assert REPEAT_KEYS == ("n_repeats", "first_repeat", "target_halfwidth", "relative", "max_repeats", "wave_repeats")


def test_options_that_do_not_apply_are_recorded_as_none(model, sample):
    permuted = prepare(model, sample, options=Options(perturbation="permute", loss="binary-crossentropy"))
    assert permuted.configuration["noise_scale"] is None and permuted.configuration["loss"] is None
    assert prepare(model, sample, options=Options(noise_relative=0.5)).configuration["noise_relative"] == 0.5


def test_every_job_offers_its_catalogued_options_and_only_those():
    from jobs import importance, seed_importance

    required = {"importance": ["--model", "m.keras", "--data", "d.npy"], "seed_importance": []}
    for job, module in (("importance", importance), ("seed_importance", seed_importance)):
        parser_help = cli.ArgumentParser()
        cli.add_run_options(parser_help, job, "out")
        flags = {action.option_strings[0] for action in parser_help._actions if action.help != "==SUPPRESS=="}
        expected = {spec.flag for _, spec in catalogue(job)}
        assert flags - {"-h"} == expected
        assert ("--feature-names" in expected) == (job == "importance")
        args = module.parse_args(required[job])  # the defaults of the command line are the API's
        for option in dataclasses.fields(Options):
            if spec_of(option).flag in expected and not spec_of(option).repeatable:
                assert getattr(args, option.name) == option.default, option.name
    assert all(spec_of(option).flag for option in dataclasses.fields(Execution))


# (API keywords, command-line arguments, the API's message, the command line's message)
ERRORS = [
    (dict(n_repeats=1), ["--repeats", "1"], "n_repeats: must be at least 2", "--repeats: must be at least 2"),
    (dict(target_halfwidth=0.1, n_repeats=4, max_repeats=3),
     ["--target-halfwidth", "0.1", "--repeats", "4", "--max-repeats", "3"],
     "max_repeats: must be at least n_repeats (4), got 3", "--max-repeats: must be at least --repeats (4), got 3"),
    (dict(batch_size=64, shard_size=100), ["--eval-batch-size", "64", "--shard-size", "100"],
     "shard_size: must be a multiple of batch_size (64), got 100",
     "--shard-size: must be a multiple of --eval-batch-size (64), got 100"),
    (dict(random_state=-1), ["--seed", "-1"], "random_state: must be a non-negative", "--seed: must be a non-negative"),
    (dict(wave_repeats=0), ["--wave-repeats", "0"], "wave_repeats: must be a positive",
     "--wave-repeats: must be a positive"),
    (dict(noise_relative=-1.0), ["--noise-relative", "-1"], "noise_relative: must be a finite",
     "--noise-relative: must be a finite"),
    (dict(metric="loss-increase"), ["--metric", "loss-increase"], "y: labels are required",
     "--labels: labels are required"),
    (dict(groups={"g": ["x9"]}), ["--group", "g=x9"], "groups: must name known features",
     "--group: must name known features"),
    (dict(feature_names=["a", "b"]), ["--feature-names", "a,b"], "feature_names: must give 3 names",
     "--feature-names: must give 3 names"),
    (dict(first_repeat=-2), ["--first-repeat", "-2"], "first_repeat: must be a non-negative",
     "--first-repeat: must be a non-negative"),
]
API_ONLY_NAMES = [option.name for option in dataclasses.fields(Options) if "_" in option.name]


@pytest.mark.parametrize("keywords, arguments, api_message, cli_message", ERRORS)
def test_errors_name_api_parameters_in_the_api_and_options_on_the_command_line(
        model, sample, files, tmp_path, keywords, arguments, api_message, cli_message):
    with pytest.raises(InvalidParameterError) as caught:
        sensitivity_importance(model, sample, **keywords)
    assert str(caught.value).startswith(api_message)
    done = call_job("jobs.importance", "--model", str(files / "model.keras"), "--data", str(files / "data.npy"),
                    "--out", str(tmp_path / "out"), *arguments, ray=False)
    assert done.returncode == 2 and done.stderr.startswith(f"error: {cli_message}"), done.stderr
    assert not any(re.search(rf"(?<![-\w]){name}\b", done.stderr) for name in API_ONLY_NAMES), done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arguments, message", [
    (["--perturbation", "permute", "--samples", "1"], "--samples: must hold at least 2 series to permute, got 1"),
    (["--metric", "loss-increase", "--repeats", "1"], "--repeats: must be at least 2"),
    (["--metric", "loss-increase", "--loss", "hinge"], "argument --loss: invalid choice: 'hinge'"),
    (["--feature-names", "a,b,c"], "unrecognized arguments: --feature-names"),
])
def test_seed_importance_names_only_its_own_options(tmp_path, arguments, message):
    done = call_job("jobs.seed_importance", "--out", str(tmp_path / "out"), *arguments, ray=False)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "--labels" not in done.stderr and "--data" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_seed_importance_loss_increase_needs_one_output_per_step(tmp_path):
    import keras

    one_output = keras.Sequential([keras.Input((10, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    one_output.save(tmp_path / "one.keras")
    done = call_job("jobs.seed_importance", "--out", str(tmp_path / "out"), "--model", str(tmp_path / "one.keras"),
                    "--metric", "loss-increase", ray=False)
    assert done.returncode == 2, done.stderr
    assert "--model: must have one output per time step (10) for --metric loss-increase" in done.stderr
    assert not (tmp_path / "out").exists()


def test_old_spellings_still_work_with_a_one_line_note(capsys):
    from jobs import seed_importance

    args = seed_importance.parse_args(["--batch-size", "7", "--relative"])
    notes = capsys.readouterr().err.splitlines()
    assert args.train_batch_size == 7 and args.relative is True
    assert notes == ["note: --batch-size is deprecated; use --train-batch-size",
                     "note: --relative is deprecated; use --halfwidth-relative"]
    args = seed_importance.parse_args(["--train-batch-size", "7", "--halfwidth-relative"])
    assert args.train_batch_size == 7 and args.relative is True and capsys.readouterr().err == ""
    assert seed_importance.parse_args([]).train_batch_size == 5 and seed_importance.parse_args([]).relative is False


@pytest.mark.parametrize("content", [b"not parquet at all", None])
def test_an_unreadable_summary_in_out_is_reported_as_unreadable(tmp_path, content):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    out.mkdir()
    if content is None:  # Parquet, but not written by rnnimp: no metadata
        pq.write_table(pa.table({"feature": ["x1"]}), out / "summary.parquet")
    else:
        (out / "summary.parquet").write_bytes(content)
    with pytest.raises(InvalidParameterError) as caught:
        cli.check_out(str(out), {"configuration": {}, "job": {}}, overwrite=False)
    message = str(caught.value)
    assert message.startswith("--out: holds an unreadable summary.parquet (") and "--overwrite" in message
    assert "configuration" not in message
    cli.check_out(str(out), {"configuration": {}, "job": {}}, overwrite=True)
    assert list(out.iterdir()) == []


def test_reference_evaluation_series_are_the_evaluation_sample_with_its_targets():
    from rnnimp import reference

    inputs, targets = reference.evaluation_series(3, 40)
    np.testing.assert_array_equal(inputs, reference.evaluation_sample(3, 40))
    np.testing.assert_array_equal(targets, inputs[:, :, 0] * inputs[:, :, 1])


@pytest.mark.slow
def test_seed_importance_loss_increase_uses_the_reference_targets(tmp_path):
    import pyarrow.parquet as pq

    from rnnimp import reference
    from rnnimp.output import read_metadata

    model = reference.build_model(0)  # untrained: any weights do for what the labels are
    model.save(tmp_path / "model.keras")
    out = tmp_path / "out"
    done = call_job("jobs.seed_importance", "--model", str(tmp_path / "model.keras"), "--metric", "loss-increase",
                    "--loss", "binary-crossentropy", "--repeats", "2", "--samples", "60", "--executor", "local",
                    "--quiet", "--out", str(out))  # in this process: Ray would add nothing to what this checks
    assert done.returncode == 0, done.stderr
    inputs, targets = reference.evaluation_series(0, 60)
    expected = sensitivity_importance(model, inputs, targets, metric="loss-increase", loss="binary-crossentropy",
                                      n_repeats=2, feature_names=reference.FEATURE_NAMES)
    effects = np.asarray(pq.read_table(out / "effects.parquet")["effect"]).reshape(3, 2)
    np.testing.assert_array_equal(effects, expected.effects)
    assert read_metadata(str(out / "summary.parquet"))["data_fingerprint"] == expected.metadata["data_fingerprint"]
