"""Helpers to run the jobs as a user would: in a subprocess, from the repo root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_job(module: str, *args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m <module> args`` with RAY_ADDRESS cleared unless ``env`` sets it."""
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=environment,
        capture_output=True, text=True, timeout=timeout,
    )


def seed_importance_in_process(out: Path, *args: str) -> Path:
    """Compute in this process, on the local executor (no Ray), what ``jobs.seed_importance --model PATH
    args`` computes, and write it into ``out`` as the job does (effects.parquet, summary.parquet, ...).

    The undisturbed run that tests of a disturbed job (killed, stopped, on a cluster) compare with. It
    parses ``args`` with the job's own parser and turns them into the API's options with the job's own
    catalogue (:func:`rnnimp.cli.options_from_args`), so the request is the job's; the effects of a
    request are the same, bit for bit, on any executor (tests/test_distributed.py). ``args`` must give
    --model; options that only say where or how the job runs are ignored. Returns ``out``.
    """
    from jobs import seed_importance as job
    from rnnimp import cli, reference
    from rnnimp.modelio import load_model
    from rnnimp.options import prepare
    from rnnimp.runner import run

    parsed = job.parse_args(list(args))
    assert parsed.model is not None, "an undisturbed run of a trained model: give --model"
    if "loss-increase" in parsed.metric.split(","):
        sample, labels = reference.evaluation_series(parsed.random_state, parsed.samples)
    else:
        sample, labels = reference.evaluation_sample(parsed.random_state, parsed.samples), None
    model = load_model(parsed.model)
    options = cli.options_from_args(parsed, job.JOB, feature_names=reference.FEATURE_NAMES)
    request = prepare(model, sample, labels, options, cli.parameter_names(job.JOB, job.INPUTS))
    run(model, request, executor="local").write(str(out))
    return out


class _NoWorkers:
    """Stands in for a job's Ray workers in a check that must end before any work: fails if they are used."""

    actors: tuple = ()

    def shutdown(self) -> None:
        pass

    def warm_up(self, *args, **kwargs):
        raise AssertionError("the job went past its input checks: its workers were about to compile the model")


def _start_no_workers(execution, actors: bool = True):
    """``cli.start_workers`` without Ray: a job refused after it would have started its workers stops these."""
    from rnnimp import cli

    class NoRayWorkers(cli.Workers):
        def _start(self) -> None:  # instead of connecting to Ray in the background
            self.where, self._executor = "no Ray (a test of a refusal)", _NoWorkers()
            self._done.set()
            self._release.wait()

    return NoRayWorkers(execution, actors)


def restore_environment(saved: dict[str, str]) -> None:
    """Make ``os.environ`` equal to ``saved`` again, touching only the variables that differ.

    Not ``clear()`` and ``update()``: putting back every variable reallocates
    the C environment again and again, and a thread of the process still
    reading it (TensorFlow's, or what Ray leaves after a shutdown) then reads
    freed memory: a pytest worker died of that once (a segfault in glibc's
    ``getenv``). Removing a variable or replacing a value in place does not
    reallocate it.
    """
    for name in [name for name in os.environ if name not in saved]:
        del os.environ[name]
    for name, value in saved.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def call_job(module: str, *args: str, env: dict | None = None, ray: bool = True) -> subprocess.CompletedProcess:
    """Run a job's ``main`` in this process, as ``python -m`` would (exit code, stdout, stderr).

    Much faster than a subprocess, since TensorFlow is imported once per test
    session. The jobs start Ray and their workers as soon as the options that
    need no model or data are checked, so that the workers import TensorFlow
    while the driver loads the model and data; a refusal found in the model or
    data then stops them again, which takes seconds. ``ray=False``, for checks
    that must end before any work (bad input): the job's workers are a
    stand-in, no Ray is started, and a job that gets past its checks fails
    the test when it would use them.
    """
    import contextlib
    import importlib
    import io
    from unittest import mock

    from rnnimp import cli

    stdout, stderr = io.StringIO(), io.StringIO()
    environment = dict(os.environ)
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.update(env or {})
    workers = contextlib.nullcontext() if ray else mock.patch.object(cli, "start_workers", _start_no_workers)
    try:
        with workers, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = cli.run(importlib.import_module(module).main, list(args))
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        restore_environment(environment)
    return subprocess.CompletedProcess([module, *args], code, stdout.getvalue(), stderr.getvalue())
