"""rnnimp.xlacache: XLA's persistent cache folder, private per driver, published whole; bit-identical training."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from rnnimp import xlacache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache root and a process that has not opened the cache yet; TF_XLA_FLAGS restored afterwards."""
    monkeypatch.setenv(xlacache.CACHE_ENV, str(tmp_path / "xla"))
    monkeypatch.delenv(xlacache.FLAGS_ENV, raising=False)
    monkeypatch.setattr(xlacache, "_opened", None)
    monkeypatch.setattr(xlacache, "_changed", False)
    monkeypatch.setattr(xlacache, "_original_flags", None)
    yield tmp_path / "xla"
    if xlacache._opened is not None:
        xlacache.publish()


def entry(folder, name: str, size: int = 16) -> str:
    path = os.path.join(folder, f"xla_compile_cache__{name}__XLA_CPU_JIT.pb")
    with open(path, "wb") as file:
        file.write(b"x" * size)
    return path


def test_the_driver_gets_a_private_folder_linking_the_shared_entries_and_keeps_the_users_flags(cache, monkeypatch):
    monkeypatch.setenv(xlacache.FLAGS_ENV, "--tf_xla_auto_jit=0")
    shared = xlacache.shared_folder()
    assert shared.startswith(str(cache)) and os.stat(shared).st_mode & 0o777 == 0o700
    old = entry(shared, "1__2")
    private = xlacache.open_for_driver()
    assert os.path.dirname(private) == shared
    flags = os.environ[xlacache.FLAGS_ENV].split()
    assert flags[0] == "--tf_xla_auto_jit=0" and f"--tf_xla_persistent_cache_directory={private}" in flags
    assert os.path.samefile(os.path.join(private, os.path.basename(old)), old)  # a hard link, not a copy
    assert xlacache.user_flags() == "--tf_xla_auto_jit=0"  # what the embedded Ray's workers get back
    assert xlacache.open_for_driver() == private  # once per process


def test_a_driver_publishes_only_at_its_end(cache):
    """Mid-run, another of the driver's threads may be writing an entry (the training beside the driver
    lane's compilation): publishing then could move a half-written entry into the shared folder."""
    shared = xlacache.shared_folder()
    private = xlacache.open_for_driver()
    entry(private, "compiled")
    assert xlacache.publish(keep_open=True) == 0 and os.listdir(shared) == [os.path.basename(private)]
    assert xlacache.publish() == 1


def test_publish_renames_only_new_whole_entries_in_and_removes_the_private_folder(cache):
    shared = xlacache.shared_folder()
    kept = entry(shared, "1__2")
    private = xlacache.open_for_driver()
    new = entry(private, "3__4", size=100)
    assert xlacache.publish() == 1
    assert not os.path.exists(private)
    assert sorted(os.listdir(shared)) == sorted([os.path.basename(kept), os.path.basename(new)])
    assert os.path.getsize(os.path.join(shared, os.path.basename(new))) == 100
    assert xlacache.publish() == 0  # nothing open any more


def test_the_oldest_entries_beyond_the_limit_are_removed(cache, monkeypatch):
    monkeypatch.setattr(xlacache, "MAX_ENTRIES", 2)
    shared = xlacache.shared_folder()
    for age, name in enumerate(["old__1", "mid__2"]):
        path = entry(shared, name)
        os.utime(path, (time.time() - 100 + age, time.time() - 100 + age))
    private = xlacache.open_for_driver()
    entry(private, "new__3")
    xlacache.publish()
    assert sorted(os.listdir(shared)) == sorted(
        f"xla_compile_cache__{name}__XLA_CPU_JIT.pb" for name in ["mid__2", "new__3"])


def test_stale_private_folders_are_removed_recent_ones_kept(cache):
    shared = xlacache.shared_folder()
    stale, recent = (os.path.join(shared, f"{xlacache.PRIVATE_PREFIX}{name}") for name in ("stale", "recent"))
    for folder in (stale, recent):
        os.makedirs(folder)
    long_ago = time.time() - xlacache.STALE_PRIVATE_S - 60
    os.utime(stale, (long_ago, long_ago))
    xlacache.open_for_driver()
    assert not os.path.exists(stale) and os.path.exists(recent)


def test_off_unsafe_or_the_users_own_cache_leave_tf_xla_flags_alone(cache, monkeypatch):
    monkeypatch.setenv(xlacache.CACHE_ENV, "off")
    assert xlacache.open_for_driver() is None and xlacache.FLAGS_ENV not in os.environ
    monkeypatch.setenv(xlacache.CACHE_ENV, str(cache))
    monkeypatch.setenv(xlacache.FLAGS_ENV, "--tf_xla_persistent_cache_directory=/theirs")
    assert xlacache.open_for_driver() is None
    assert os.environ[xlacache.FLAGS_ENV] == "--tf_xla_persistent_cache_directory=/theirs"
    monkeypatch.delenv(xlacache.FLAGS_ENV)
    shared = xlacache.shared_folder()
    os.chmod(shared, 0o777)  # others could plant programs in it
    assert xlacache.shared_folder() is None and xlacache.open_for_driver() is None


def test_the_folder_depends_on_the_cpu_and_tensorflow_version():
    key = xlacache.machine_key()
    assert key.startswith("tf") and key == xlacache.machine_key()
    assert "2." in key  # TensorFlow's version


def test_a_worker_gets_a_folder_of_its_host_and_pid_and_publishes_while_it_runs(cache):
    shared = xlacache.shared_folder()
    entry(shared, "earlier")
    private = xlacache.open_for_worker()
    assert os.path.basename(private).startswith(f"{xlacache.WORKER_PREFIX}{xlacache._host()}-{os.getpid()}-")
    assert os.listdir(private) == [os.path.basename(entry(shared, "earlier"))]  # linked in
    assert f"--tf_xla_persistent_cache_directory={private}" in os.environ[xlacache.FLAGS_ENV]
    entry(private, "compiled")
    assert xlacache.publish(keep_open=True) == 1  # right after the compilation: a worker is killed, not ended
    assert os.path.exists(os.path.join(shared, "xla_compile_cache__compiled__XLA_CPU_JIT.pb"))
    assert os.path.isdir(private) and xlacache.open_for_worker() == private  # still in use
    assert xlacache.publish(keep_open=True) == 0


def test_the_folders_of_this_hosts_ended_workers_are_removed_others_kept(cache):
    shared = xlacache.shared_folder()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, host = int(ended.stdout), xlacache._host()
    folders = {name: os.path.join(shared, f"{xlacache.WORKER_PREFIX}{name}")
               for name in (f"{host}-{dead_pid}-ab12", f"{host}-{os.getpid()}-cd34", f"elsewhere-{dead_pid}-ef56")}
    for folder in folders.values():
        os.makedirs(folder)
    xlacache.open_for_driver()
    assert [name for name, folder in folders.items() if os.path.exists(folder)] == [
        f"{host}-{os.getpid()}-cd34", f"elsewhere-{dead_pid}-ef56"]


TRAIN = """
import hashlib, os, sys
from rnnimp import xlacache
xlacache.open_for_driver()
from rnnimp import reference
trained = reference.train_model(3, epochs=2, steps_per_epoch=50, batch_size=4)
print(xlacache.publish(), hashlib.sha256(b"".join(w.tobytes() for w in trained.model.get_weights())).hexdigest())
"""


@pytest.mark.slow
def test_a_training_loaded_from_the_cache_gives_the_same_weights_bit_for_bit(tmp_path):
    environment = {**os.environ, xlacache.CACHE_ENV: str(tmp_path / "xla"), "PYTHONPATH": REPO,
                   "TF_CPP_MIN_LOG_LEVEL": "2"}
    environment.pop(xlacache.FLAGS_ENV, None)
    runs = [subprocess.run([sys.executable, "-c", TRAIN], env=environment, capture_output=True, text=True,
                           timeout=600) for _ in range(2)]
    assert all(run.returncode == 0 for run in runs), runs[-1].stderr
    (published_cold, weights_cold), (published_warm, weights_warm) = (run.stdout.split() for run in runs)
    assert int(published_cold) >= 1 and published_warm == "0"  # the second run compiled nothing new
    assert weights_warm == weights_cold


def test_the_workers_get_the_users_flags_not_the_drivers_private_folder(cache, monkeypatch):
    from rnnimp import distributed

    monkeypatch.setenv(xlacache.FLAGS_ENV, "--tf_xla_auto_jit=0")
    private = xlacache.open_for_driver()
    assert private in os.environ[xlacache.FLAGS_ENV]  # what the embedded Ray's processes inherit
    for connected in ("embedded local Ray (2 CPUs)", "Ray cluster at 10.0.0.1:6379"):
        monkeypatch.setattr(distributed, "_CONNECTED_AS", connected)
        assert distributed.worker_env()[xlacache.FLAGS_ENV] == "--tf_xla_auto_jit=0"
    monkeypatch.delenv(xlacache.FLAGS_ENV)
    monkeypatch.setattr(xlacache, "_changed", False)
    assert distributed.worker_env()[xlacache.FLAGS_ENV] == ""  # set even so: a worker replaces it, adds nothing
