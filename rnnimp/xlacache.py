"""XLA's persistent compilation cache, for the jobs' driver and the workers of their embedded Ray.

TensorFlow can keep what it compiles with XLA (``jit_compile=True``) on disk
and load it in later processes (``TF_XLA_FLAGS`` with
``--tf_xla_persistent_cache_directory``): the reference training's epoch
program and the forward pass then compile once per machine, not once per
run. TensorFlow loads an entry only for the very HLO it was compiled from
(it compares them), so a loaded program is the program a fresh compilation
gives, and the results are the same bit for bit.

TensorFlow writes an entry in place, and a compilation that finds a
half-written entry fails (so would every later one). So the shared folder
only ever receives whole files, renamed into it: the driver points
TensorFlow at a private folder holding hard links to the shared entries
(:func:`open_for_driver`), TensorFlow adds its new entries there, and the
job moves them into the shared folder when it ends (:func:`publish`).

The workers cache their forward pass the same way, each with a private
folder of its own named by host and pid (:func:`open_for_worker`), set up
in the worker before its TensorFlow starts; a worker publishes what it
compiled right after compiling (``publish(keep_open=True)``), since a
worker is killed, not asked to end. Its folder is removed by the next
worker or driver on that host that finds its process gone, or after
:data:`STALE_PRIVATE_S`. An entry's key includes the name TensorFlow gave
the function, numbered in the order a process traces functions: a worker
finds what earlier workers compiled (they trace in the same order), never
the driver's entries, nor the driver theirs. Only CPU programs are cached.

Where: ``$RNNIMP_XLA_CACHE``, else ``$XDG_CACHE_HOME/rnnimp/xla``, else
``~/.cache/rnnimp/xla``; ``RNNIMP_XLA_CACHE=off`` turns the cache off. One
subfolder per TensorFlow version and CPU (model name and instruction-set
flags): a program compiled for one CPU may not run on another. The folder
must belong to the user and be writable by nobody else (what is loaded from
it runs in the process); otherwise the cache stays off. At most
:data:`MAX_ENTRIES` entries (about 1 MiB each) are kept, the oldest removed
first. A user's own ``--tf_xla_persistent_cache_directory`` in
``TF_XLA_FLAGS`` is left as it is (rnnimp then adds nothing).

Knows nothing of Ray; never imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import time

CACHE_ENV = "RNNIMP_XLA_CACHE"
FLAGS_ENV = "TF_XLA_FLAGS"
MAX_ENTRIES = 200
ENTRY_SUFFIX = ".pb"
PRIVATE_PREFIX = ".driver-"
WORKER_PREFIX = ".worker-"  # then host, pid and a random part: .worker-HOST-PID-RANDOM
STALE_PRIVATE_S = 24 * 3600.0  # a private folder left by a killed run is removed after this long
_OWN_FLAG = "--tf_xla_persistent_cache_directory"

_original_flags: str | None = None  # TF_XLA_FLAGS before open_for_driver changed it (None: unset)
_changed = False  # whether open_for_driver changed TF_XLA_FLAGS in this process
_opened: tuple[str, str] | None = None  # (shared folder, private folder) of this driver or worker


def cache_root() -> str | None:
    """The cache's root folder, or None when ``RNNIMP_XLA_CACHE=off`` (or 0, false, no)."""
    chosen = os.environ.get(CACHE_ENV, "").strip()
    if chosen.lower() in ("off", "0", "false", "no"):
        return None
    if chosen:
        return os.path.abspath(os.path.expanduser(chosen))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rnnimp", "xla")


def machine_key() -> str:
    """What a compiled program depends on besides its HLO: the TensorFlow version and this CPU, as a folder name."""
    import importlib.metadata

    version = "unknown"
    for distribution in ("tensorflow", "tensorflow-cpu", "tf-nightly", "tensorflow-intel", "tensorflow-macos"):
        try:
            version = importlib.metadata.version(distribution)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            lines = info.read().splitlines()
        cpu = "\n".join(next((line for line in lines if line.startswith(key)), "")
                        for key in ("vendor_id", "model name", "flags"))
    except OSError:
        import platform

        cpu = f"{platform.machine()} {platform.processor()}"
    return f"tf{version}-{hashlib.sha256(cpu.encode()).hexdigest()[:12]}"


def shared_folder(create: bool = True) -> str | None:
    """This machine's shared cache folder (made, mode 0700, if ``create``), or None if off or unsafe.

    Unsafe: it belongs to another user, or others may write into it.
    """
    root = cache_root()
    if root is None:
        return None
    folder = os.path.join(root, machine_key())
    try:
        if create:
            os.makedirs(folder, mode=0o700, exist_ok=True)
        info = os.stat(folder)
    except OSError:
        return None
    if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o022):
        return None
    return folder


def _flags_name_a_cache(flags: str) -> bool:
    return _OWN_FLAG in flags


def open_for_driver() -> str | None:
    """Point this process's TensorFlow at a private folder seeded with the shared entries; that folder, or None.

    Sets ``TF_XLA_FLAGS`` (keeping the user's flags): call before
    TensorFlow is imported, and before any other thread starts (it changes
    the environment). Does nothing if the cache is off or unsafe, if the
    user's ``TF_XLA_FLAGS`` names a cache already, or if it ran before.
    """
    return _open(PRIVATE_PREFIX)


def open_for_worker() -> str | None:
    """:func:`open_for_driver` for a worker process: its private folder is named by this host and pid.

    Call before TensorFlow is imported. ``TF_XLA_FLAGS`` should already be
    set (possibly empty) in the worker's environment, so that changing it
    replaces a variable rather than adding one while Ray's threads run.
    """
    return _open(f"{WORKER_PREFIX}{_host()}-{os.getpid()}-")


def _host() -> str:
    return socket.gethostname().replace("-", "_") or "host"


def _open(prefix: str) -> str | None:
    global _original_flags, _opened, _changed
    if _opened is not None:
        return _opened[1]
    original = os.environ.get(FLAGS_ENV, "")
    if _flags_name_a_cache(original):
        return None
    shared = shared_folder()
    if shared is None:
        return None
    try:
        _remove_stale_private(shared)
        private = tempfile.mkdtemp(prefix=prefix, dir=shared)
        for name in _entries(shared):
            try:
                os.link(os.path.join(shared, name), os.path.join(private, name))
            except OSError:  # removed meanwhile, or no hard links here: compiled again instead
                continue
    except OSError:
        return None
    _original_flags, _changed = os.environ.get(FLAGS_ENV), True
    os.environ[FLAGS_ENV] = " ".join(part for part in (
        original, f"{_OWN_FLAG}={private}", "--tf_xla_persistent_cache_device_types=CPU") if part)
    _opened = (shared, private)
    return private


def publish(keep_open: bool = False) -> int:
    """Move the entries this process compiled into the shared folder (whole files, renamed in); how many.

    Then removes the oldest shared entries beyond :data:`MAX_ENTRIES` and,
    unless ``keep_open``, the private folder: call without it once
    TensorFlow compiles nothing more in this process (at the end of a job);
    later compilations are not cached. With ``keep_open`` (a worker after a
    compilation), the private folder stays in use; it does nothing (0) in a
    driver, where another thread may be writing an entry meanwhile (the
    training beside the driver lane's compilation). Nothing to do (0) if
    this process opened no folder.
    """
    global _opened
    if _opened is None:
        return 0
    shared, private = _opened
    if keep_open and not os.path.basename(private).startswith(WORKER_PREFIX):
        return 0
    if not keep_open:
        _opened = None
    moved = 0
    try:
        known = set(_entries(shared))
        for name in _entries(private):
            if name in known:
                continue
            staged = os.path.join(shared, f".{name}.{os.getpid()}.tmp")
            try:
                try:
                    os.link(os.path.join(private, name), staged)
                except OSError:
                    shutil.copyfile(os.path.join(private, name), staged)
                os.replace(staged, os.path.join(shared, name))
                moved += 1
            except OSError:
                _remove_quietly(staged)
        _evict(shared)
    finally:
        if not keep_open:
            shutil.rmtree(private, ignore_errors=True)
    return moved


def user_flags() -> str:
    """The user's own ``TF_XLA_FLAGS`` (before :func:`open_for_driver` added the private folder), or ""."""
    if _changed:
        return _original_flags or ""
    return os.environ.get(FLAGS_ENV, "")


def _entries(folder: str) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith(ENTRY_SUFFIX) and not name.startswith(".")]


def _evict(shared: str) -> None:
    """Remove the oldest entries beyond MAX_ENTRIES (a driver holding a hard link to one keeps its copy)."""
    entries = []
    for name in _entries(shared):
        try:
            entries.append((os.stat(os.path.join(shared, name)).st_mtime, name))
        except OSError:
            continue
    for _, name in sorted(entries)[:max(0, len(entries) - MAX_ENTRIES)]:
        _remove_quietly(os.path.join(shared, name))


def _worker_gone(name: str) -> bool:
    """Whether ``name`` is the private folder of a worker of this host whose process has ended."""
    if not name.startswith(WORKER_PREFIX):
        return False
    parts = name[len(WORKER_PREFIX):].rsplit("-", 2)
    if len(parts) != 3 or parts[0] != _host() or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def _remove_stale_private(shared: str) -> None:
    """Remove private folders (and staged files) that runs killed long ago left behind, and those of this
    host's workers that have ended."""
    now = time.time()
    for name in os.listdir(shared):
        if not name.startswith("."):
            continue
        path = os.path.join(shared, name)
        try:
            if now - os.stat(path).st_mtime < STALE_PRIVATE_S and not _worker_gone(name):
                continue
        except OSError:
            continue
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            _remove_quietly(path)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
