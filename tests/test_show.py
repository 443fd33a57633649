"""jobs.show and rnnimp.report on summary.parquet files written here with pyarrow (no model, no Ray)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import show
from jobtools import call_job, run_job
from rnnimp import cli
from rnnimp.errors import InvalidParameterError
from rnnimp.report import format_bootstrap_methods, format_configuration, format_summary, read_run

# The README's reference table, in feature order x3, x1, x2 (rank 3, 1, 2).
ROWS = {
    "feature": ["x3", "x1", "x2"],
    "mean": [0.0040, 0.1039, 0.1036], "std": [0.0002, 0.0021, 0.0021],
    "t_low": [0.0039, 0.1031, 0.1029], "t_high": [0.0040, 0.1046, 0.1044],
    "bootstrap_low": [0.0039, 0.1031, 0.1029], "bootstrap_high": [0.0040, 0.1046, 0.1044],
    "rank": [3, 1, 2],
}
README_TABLE = """\
rank  feature           mean       std         95% t-interval          95% bootstrap
------------------------------------------------------------------------------------
   1  x1              0.1039    0.0021  [  0.1031,   0.1046]  [  0.1031,   0.1046]
   2  x2              0.1036    0.0021  [  0.1029,   0.1044]  [  0.1029,   0.1044]
   3  x3              0.0040    0.0002  [  0.0039,   0.0040]  [  0.0039,   0.0040]"""
METADATA = {
    "configuration": {"n_repeats": 30, "noise_scale": 0.2, "confidence": 0.95},
    "seed": 7,
}


def summary_table(rows=ROWS, bootstrap_method=None):
    columns = {
        "feature_index": pa.array(np.arange(len(rows["feature"])), pa.int32()),
        "feature": pa.array(rows["feature"], pa.string()),
        "n_repeats": pa.array([30] * len(rows["feature"]), pa.int64()),
        **{name: pa.array(rows[name], pa.float64()) for name in
           ("mean", "std", "t_low", "t_high", "bootstrap_low", "bootstrap_high")},
        "rank": pa.array(rows["rank"], pa.int64()),
    }
    if bootstrap_method is not None:
        columns["bootstrap_method"] = pa.array(bootstrap_method, pa.string())
    return pa.table(columns)


def write_run(folder, table, metadata=METADATA):
    folder.mkdir(parents=True, exist_ok=True)
    if metadata is not None:
        table = table.replace_schema_metadata({b"rnnimp": json.dumps(metadata)})
    pq.write_table(table, folder / "summary.parquet")
    return folder


def test_format_summary_reproduces_the_reference_layout():
    assert format_summary(summary_table(), 0.95) == README_TABLE


def test_format_summary_names_the_confidence_level():
    assert format_summary(summary_table(), 0.9).splitlines()[0].endswith("90% t-interval          90% bootstrap")


def test_format_summary_of_a_time_step_map_names_the_step():
    table = summary_table().append_column("step", pa.array([4, 0, 9], pa.int32()))
    assert [line.split()[1] for line in format_summary(table, 0.95).splitlines()[2:]] == ["x1[0]", "x2[9]", "x3[4]"]


@pytest.mark.parametrize(
    "configuration, line",
    [
        ({"perturbation": "permute", "n_repeats": 20, "noise_scale": None, "confidence": 0.9},
         "seed 7, 20 repeats, perturbation permute, confidence 90%"),
        ({"n_repeats": 10, "target_halfwidth": 0.01, "max_repeats": 100, "noise_relative": 0.1, "confidence": 0.95},
         "seed 7, 10 repeats (adaptive, at most 100), noise scale 0.1 x each feature's std, confidence 95%"),
    ],
)
def test_format_configuration_says_what_was_perturbed(configuration, line):
    assert format_configuration({"configuration": configuration, "seed": 7}) == line


@pytest.mark.parametrize(
    "methods, note",
    [
        (["bca", "bca", "bca"], "bootstrap intervals: BCa"),
        (["percentile", "percentile", None], "bootstrap intervals: percentile"),
        ([None, None, None], "bootstrap intervals: none (t-intervals only)"),
    ],
)
def test_format_bootstrap_methods(methods, note):
    assert format_bootstrap_methods(summary_table(bootstrap_method=methods)) == note
    assert format_bootstrap_methods(summary_table()) is None


def test_read_run_returns_the_table_and_its_metadata(tmp_path):
    table, metadata = read_run(str(write_run(tmp_path / "run", summary_table())))
    assert table.column("feature").to_pylist() == ["x3", "x1", "x2"]
    assert metadata == METADATA


def test_show_prints_the_configuration_and_the_features_by_rank(tmp_path, capsys):
    run = write_run(tmp_path / "run", summary_table(bootstrap_method=["percentile", "bca", "bca"]))
    assert cli.run(show.main, [str(run)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"run: {run}"
    assert printed[1] == "seed 7, 30 repeats, noise scale 0.2, confidence 95%"
    assert "\n".join(printed[3:8]) == README_TABLE
    assert [line.split()[1] for line in printed[5:8]] == ["x1", "x2", "x3"]
    assert printed[-1] == "bootstrap intervals: BCa; percentile for x3 (BCa undefined)"


def test_show_without_metadata_marks_the_unknown_configuration(tmp_path, capsys):
    run = write_run(tmp_path / "run", summary_table(), metadata=None)
    assert cli.run(show.main, [str(run)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "seed ?, ? repeats, noise scale ?, confidence ?"


def test_show_from_the_command_line(tmp_path):
    run = write_run(tmp_path / "run", summary_table())
    done = run_job("jobs.show", str(run), timeout=120)
    assert done.returncode == 0, done.stderr
    assert README_TABLE in done.stdout


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: tmp / "missing", "DIR: must be an existing folder, got"),
        (lambda tmp: tmp, "DIR: must hold summary.parquet (the output of a finished run), got"),
        (lambda tmp: (tmp / "summary.parquet").write_bytes(b"not parquet") and tmp,
         "DIR: must be a readable run folder"),
        (lambda tmp: write_run(tmp, summary_table().drop_columns(["t_low", "rank"])),
         "DIR: must hold an rnnimp summary.parquet (missing columns t_low, rank), got"),
    ],
)
def test_show_refuses_what_is_not_a_finished_run(tmp_path, capsys, make, message):
    folder = make(tmp_path) or tmp_path
    assert cli.run(show.main, [str(folder)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ")
    assert message in captured.err


def test_show_errors_are_one_line_and_exit_2_from_the_command_line(tmp_path):
    for args in ([str(tmp_path / "missing")], []):
        done = call_job("jobs.show", *args)
        assert done.returncode == 2
        assert len(done.stderr.strip().splitlines()) == 1 and "error: " in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_read_run_names_its_parameter(tmp_path):
    with pytest.raises(InvalidParameterError, match="^folder: must be an existing folder"):
        read_run(str(tmp_path / "missing"))
