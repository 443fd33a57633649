"""What a user sees: only rnnimp's lines by default, everything with --verbose; sizes refused up front."""

from __future__ import annotations

import re

import pytest

from jobtools import run_job

pytestmark = pytest.mark.slow

# One worker: what it prints (or, quiet, does not) is what each of several would.
SMALL_RUN = ("--epochs", "1", "--steps-per-epoch", "5", "--samples", "50", "--repeats", "2", "--num-cpus", "1")

# Every line a quiet run may print: rnnimp's own, the summary table, the progress bar.
RNNIMP_LINES = [re.compile(pattern) for pattern in (
    r"^$",
    r"^rnnimp: ",
    r"^(\x1b\[\d+m)?\(_EvaluationWorker pid=\d+\)(\x1b\[0m)? rnnimp: ",  # a worker's warning, streamed by Ray
    r"^error: ",
    r"^rank +feature +mean +std ",
    r"^-+$",
    r"^ +\d+ +\S+ +-?\d",  # a summary row
    r"^phases: ",
    r"^wrote \w+: ",
    r"^units: +\d+%\|",  # tqdm
)]


def foreign_lines(text: str) -> list[str]:
    lines = re.split(r"[\r\n]", text)
    return [line for line in lines if not any(pattern.search(line) for pattern in RNNIMP_LINES)]


def test_a_run_prints_only_rnnimp_lines(tmp_path):
    done = run_job("jobs.seed_importance", *SMALL_RUN, "--out", str(tmp_path / "run"), timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert foreign_lines(done.stdout) == []
    assert foreign_lines(done.stderr) == []
    assert "rnnimp: running on embedded local Ray" in done.stdout and "wrote summary" in done.stdout


def test_verbose_lets_tensorflow_and_ray_speak(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # (an earlier ray.init in this process sets it)
    # --workers-only: the driver lane would finish this small run before the workers import TensorFlow
    done = run_job("jobs.seed_importance", *SMALL_RUN, "--verbose", "--workers-only", "--out", str(tmp_path / "run"),
                   timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    foreign = foreign_lines(done.stderr)
    assert any("oneDNN custom operations are on" in line for line in foreign)  # the driver's TF
    assert any("_EvaluationWorker pid=" in line for line in foreign)  # the workers' TF, streamed by Ray
    assert any("Token authentication is enabled" in line for line in foreign)  # Ray's own notice


def test_a_batch_too_large_for_the_workers_is_refused_before_any_work(tmp_path):
    out = tmp_path / "run"
    done = run_job("jobs.seed_importance", "--samples", "3000000", "--eval-batch-size", "3000000",
                   "--shard-size", "3000000", "--repeats", "2", "--num-cpus", "2", "--out", str(out), timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert foreign_lines(done.stderr) == [], done.stderr
    error = done.stderr.strip()
    assert error.count("\n") == 0
    assert error.startswith("error: a worker needs about ") and "smaller --eval-batch-size (now 3000000" in error
    assert "rnnimp: trained" not in done.stdout  # refused before training
    assert not out.exists() or not any(out.iterdir())
