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
