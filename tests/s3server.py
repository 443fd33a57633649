"""A real S3 endpoint for the tests: moto's server mode on 127.0.0.1, in a subprocess.

Endpoint and credentials reach ``pyarrow.fs`` the documented ways: the endpoint
as URI query parameters (``s3://bucket/key?endpoint_override=127.0.0.1:PORT&scheme=http``;
pyarrow does not read ``AWS_ENDPOINT_URL``) and the credentials as the
standard ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` environment variables,
which subprocesses (and Ray workers started afterwards) inherit. The same URI
form works for MinIO or any S3-compatible store.

Use the session fixture ``s3`` (see conftest.py) or, by hand::

    with S3Server() as server:
        server.create_bucket("data")
        uri = server.uri("data/prefix")
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_DEFAULT_REGION": REGION,
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class S3Server:
    """``python -m moto.server`` on 127.0.0.1 and a free port, stopped by :meth:`stop`."""

    def __init__(self, startup_timeout_s: float = 60.0) -> None:
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self._saved_environment = {name: os.environ.get(name) for name in CREDENTIALS}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + startup_timeout_s
        while True:
            try:
                urllib.request.urlopen(f"http://{self.endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not start on {self.endpoint}") from None
                time.sleep(0.2)
        os.environ.update(CREDENTIALS)

    def uri(self, path: str) -> str:
        """``s3://path`` with this endpoint as query parameters, as pyarrow.fs reads it."""
        return f"s3://{path}?endpoint_override={self.endpoint}&scheme=http"

    def filesystem(self):
        """A pyarrow S3FileSystem on this endpoint."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION,
                                 endpoint_override=self.endpoint, scheme="http",
                                 allow_bucket_creation=True, allow_bucket_deletion=True)

    def create_bucket(self, name: str) -> None:
        self.filesystem().create_dir(name)

    def stop(self) -> None:
        """Stop the server (its stored objects go with it) and restore the environment."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for name, value in self._saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def __enter__(self) -> "S3Server":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


BUCKET = "rnnimp-test"


def _s3_fixture():
    import pytest

    @pytest.fixture(scope="session")
    def s3():
        """A running S3Server with the bucket ``BUCKET``; stopped at the end of the session."""
        with S3Server() as server:
            server.create_bucket(BUCKET)
            yield server

    return s3


s3 = _s3_fixture()  # import it into a test module: ``from s3server import s3``
