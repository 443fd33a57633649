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


def call_job(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a job's ``main`` in this process, as ``python -m`` would (exit code, stdout, stderr).

    For checks that end before any work starts (bad input): much faster than
    a subprocess, since TensorFlow is imported once per test session.
    """
    import contextlib
    import importlib
    import io

    from rnnimp import cli

    stdout, stderr = io.StringIO(), io.StringIO()
    environment = dict(os.environ)
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = cli.run(importlib.import_module(module).main, list(args))
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(environment)
    return subprocess.CompletedProcess([module, *args], code, stdout.getvalue(), stderr.getvalue())
