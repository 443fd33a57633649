"""What a run prints: rnnimp's own lines, the progress bar and the summary; nothing else unless --verbose.

TensorFlow writes its start-up notices (oneDNN, CPU features, absl's
"before InitializeLog" banner) straight to file descriptor 2 while it is
imported, before ``TF_CPP_MIN_LOG_LEVEL`` takes effect, so the import runs
under :func:`filtered_stderr`, which drops those lines and passes every other
one through (errors always reach the user). So do the first calls of the
XLA programs the driver may load from XLA's persistent cache
(:mod:`rnnimp.xlacache`): on some CPUs XLA reports each load as an error
naming a *tuning preference* (``+prefer-no-scatter``) of the compiled
program that the CPU's feature list lacks, and TensorFlow reports that an
entry does not parse as text before it reads it as the binary it is; those
lines, and no other error, are dropped too. Warnings that matter (a worker
lost, a shard recomputed) go through the ``rnnimp`` logger, printed as
``rnnimp: warning: ...``. ``RNNIMP_VERBOSE=1`` (set by ``--verbose``, passed
on to the workers) turns all filtering off. Knows nothing of Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from typing import Iterator

VERBOSE_ENV = "RNNIMP_VERBOSE"

# Informational start-up lines of TensorFlow / absl / XLA written to fd 2 (never E or F severities).
CHATTER = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^[IW]\d{4} \d+:\d+:\d+\.\d+\s+\d+ [\w.\-/]+:\d+\] "),  # absl: I0000 00:00:17.. 123 port.cc:153]
    re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] "),  # tsl: 2025-01-01 10:00:00.0: I tensorflow/...
    re.compile(r"^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.$"),
    # XLA loading a cached CPU program whose target lists a tuning preference, which a CPU's features never do:
    re.compile(r"^E\d{4} \d+:\d+:\d+\.\d+\s+\d+ cpu_aot_loader\.cc:\d+\] Loading XLA:CPU AOT result\. "
               r"Target machine feature \+prefer-[\w-]+ is not\s+supported on the host machine\."),
    # ... and reading a cache entry, which TensorFlow tries as text before it reads it as the binary it is:
    re.compile(r"^E\d{4} \d+:\d+:\d+\.\d+\s+\d+ text_format\.cc:\d+\] Error parsing text-format "
               r"tensorflow\.XlaSerializedCacheEntry: "),
)


def verbose() -> bool:
    """Whether this process (driver or worker) runs with --verbose."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def set_verbose(on: bool) -> None:
    """Record the choice in the environment, which the workers inherit."""
    os.environ[VERBOSE_ENV] = "1" if on else ""


def is_chatter(line: str) -> bool:
    return any(pattern.search(line) for pattern in CHATTER)


_capture_lock = threading.Lock()
_capture: dict = {"depth": 0, "saved": None, "file": None}  # the capture of fd 2 open now, shared by all threads


@contextlib.contextmanager
def filtered_stderr(enabled: bool = True) -> Iterator[None]:
    """Capture file descriptor 2 (C++ and Python writes) and replay all but :data:`CHATTER` lines afterwards.

    Blocks may overlap, in one thread or several (the driver compiles in
    two): the first to enter starts the capture, the last to leave ends it
    and replays what every one of them wrote.
    """
    if not enabled:
        yield
        return
    with _capture_lock:
        if _capture["depth"] == 0:
            sys.stderr.flush()
            capture = tempfile.TemporaryFile()
            _capture.update(saved=os.dup(2), file=capture)
            os.dup2(capture.fileno(), 2)
        _capture["depth"] += 1
    try:
        yield
    finally:
        with _capture_lock:
            _capture["depth"] -= 1
            if _capture["depth"] == 0:
                sys.stderr.flush()
                saved, capture = _capture["saved"], _capture["file"]
                _capture.update(saved=None, file=None)
                os.dup2(saved, 2)
                os.close(saved)
                with capture:
                    capture.seek(0)
                    kept = [line for line in capture.read().decode(errors="replace").splitlines()
                            if line.strip() and not is_chatter(line)]
                if kept:
                    print("\n".join(kept), file=sys.stderr, flush=True)


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"rnnimp: {record.levelname.lower()}: {record.getMessage()}"


def setup() -> None:
    """Print the ``rnnimp`` logger's warnings as one ``rnnimp: warning: ...`` line each; quiet Python-side TF/absl.

    Called by the driver of a job and by every worker (whose lines Ray
    streams to the driver behind a ``(_EvaluationWorker pid=N)`` prefix).
    With --verbose, also the info lines, and TF's and absl's Python loggers
    keep their defaults.
    """
    logger = logging.getLogger("rnnimp")
    if not any(getattr(handler, "_rnnimp", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Format())
        handler._rnnimp = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if verbose() else logging.WARNING)
    quiet_python_loggers()


def quiet_python_loggers() -> None:
    """TensorFlow's and absl's Python loggers at ERROR unless verbose."""
    if verbose():
        return
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    if "absl.logging" in sys.modules:
        sys.modules["absl.logging"].set_verbosity("error")
