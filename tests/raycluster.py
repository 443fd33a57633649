"""A local Ray head started with ``ray start --head`` for tests, stopped by pid.

Everything is bound to 127.0.0.1, on free ports, with its own short temp
folder; token authentication is disabled for this head and its clients
(``RAY_AUTH_MODE=disabled``). Stopping kills exactly the processes whose
command line names that temp folder, never another Ray on the machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes_mentioning(text: str) -> list[int]:
    """Pids of this machine's processes whose command line contains ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


class LocalHead:
    """``ray start --head`` on 127.0.0.1; use as a context manager."""

    def __init__(self, num_cpus: int = 2) -> None:
        self.num_cpus = num_cpus
        self.temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: unix socket paths are limited
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
            "RAY_AUTH_MODE": "disabled",
            # Without this, Ray on Linux replaces 127.0.0.1 with the machine's address.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def start(self) -> "LocalHead":
        command = [
            str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
            f"--port={self.gcs_port}", f"--num-cpus={self.num_cpus}", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}", f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
        ]
        subprocess.run(command, env=self.env, check=True, capture_output=True, timeout=180)
        self._wait_for_job_server()
        return self

    def _wait_for_job_server(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = subprocess.run([str(BIN / "ray"), "job", "list", "--address", self.dashboard_url],
                                  env=self.env, capture_output=True, text=True, timeout=60)
            if done.returncode == 0:
                return
            time.sleep(1)
        raise TimeoutError(f"the job server at {self.dashboard_url} did not answer: {done.stderr[-500:]}")

    def stop(self) -> None:
        """Kill every process of this head (found by its temp folder), by pid."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = processes_mentioning(self.temp_dir)
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 15
            while pids and time.monotonic() < deadline:
                time.sleep(0.2)
                pids = processes_mentioning(self.temp_dir)
            if not pids:
                return

    def __enter__(self) -> "LocalHead":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
