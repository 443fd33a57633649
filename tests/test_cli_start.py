"""rnnimp.cli's start-up: Ray in a background thread, errors raised in the driver's thread, the evaluation's size."""

from __future__ import annotations

import threading

import pytest

from rnnimp import cli, distributed, reference
from rnnimp.errors import InvalidParameterError
from rnnimp.options import Execution, Options, prepare


class FakeExecutor:
    made: list = []

    def __init__(self, **kwargs) -> None:
        self.kwargs, self.started, self.stopped = kwargs, 0, 0
        FakeExecutor.made.append(self)

    def start(self):
        self.started += 1
        return self

    def shutdown(self) -> None:
        self.stopped += 1


@pytest.fixture
def fake_ray(monkeypatch):
    """connect/RayExecutor/shutdown replaced; records the thread connect ran in and the shutdowns."""
    calls = {"connect_thread": None, "shutdowns": 0}

    def connect(num_cpus, connect_timeout):
        calls["connect_thread"] = threading.current_thread()
        return "fake Ray"

    FakeExecutor.made = []
    monkeypatch.setattr(distributed, "connect", connect)
    monkeypatch.setattr(distributed, "RayExecutor", FakeExecutor)
    monkeypatch.setattr(distributed, "shutdown", lambda: calls.__setitem__("shutdowns", calls["shutdowns"] + 1))
    return calls


def test_ray_starts_in_a_thread_that_lives_until_stop(fake_ray):
    workers = cli.Workers(Execution(num_cpus=2))
    executor = workers.ready()
    assert fake_ray["connect_thread"] is not threading.main_thread()
    assert executor.started == 1 and workers.where == "fake Ray"
    # Ray's processes get their parent-death signal when the thread that started them ends: it must live on.
    assert workers._thread.is_alive()
    workers.stop()
    assert not workers._thread.is_alive()
    assert executor.stopped == 1 and fake_ray["shutdowns"] == 1
    workers.stop()  # again: nothing more to stop
    assert executor.stopped == 1 and fake_ray["shutdowns"] == 1


def test_actors_false_connects_without_starting_the_actors(fake_ray):
    workers = cli.Workers(Execution(num_cpus=2), actors=False)
    assert workers.ready().started == 0
    workers.stop()


def test_an_error_of_the_background_start_is_raised_in_the_drivers_thread(fake_ray, monkeypatch):
    def unreachable(num_cpus, connect_timeout):
        raise InvalidParameterError("RAY_ADDRESS", "must name a reachable Ray cluster", "127.0.0.1:1")

    monkeypatch.setattr(distributed, "connect", unreachable)
    workers = cli.Workers(Execution())
    with pytest.raises(InvalidParameterError, match="RAY_ADDRESS: must name a reachable Ray cluster"):
        workers.ready()
    workers.stop()
    assert not workers._thread.is_alive() and FakeExecutor.made == []


def test_a_gpu_share_no_node_grants_is_refused_after_disconnecting(fake_ray, monkeypatch):
    def refuse(share, parameter):
        raise InvalidParameterError(parameter, "must be at most the GPUs of one node of the cluster (0)", share)

    monkeypatch.setattr(distributed, "check_gpus", refuse)
    workers = cli.Workers(Execution(gpus_per_worker=0.5))
    with pytest.raises(InvalidParameterError, match="--gpus-per-worker"):
        workers.ready()
    assert fake_ray["shutdowns"] == 1  # the thread disconnected before giving up
    workers.stop()


def test_evaluation_steps_count_the_baseline_and_every_target_step_and_repeat():
    model, sample = reference.build_model(0), reference.evaluation_sample(0, 100)
    assert cli.evaluation_steps(prepare(model, sample, options=Options(n_repeats=3))) == 100 * 10 * (1 + 3 * 3)
    per_step = prepare(model, sample, options=Options(n_repeats=3, per_step=True))
    assert cli.evaluation_steps(per_step) == 100 * 10 * (1 + 3 * 3 * 10)
    adaptive = prepare(model, sample, options=Options(n_repeats=3, max_repeats=8, target_halfwidth=0.01))
    assert cli.evaluation_steps(adaptive) == 100 * 10 * (1 + 3 * 8)
    # The seed job's defaults are far below the threshold: its workers start once the model is trained.
    defaults = prepare(model, reference.evaluation_sample(0, 250), options=Options(n_repeats=30))
    assert cli.evaluation_steps(defaults) < cli.SMALL_EVALUATION_STEPS


def test_exit_process_flushes_and_skips_the_teardown(tmp_path):
    import os
    import subprocess
    import sys

    script = ("import atexit\nfrom rnnimp import cli\natexit.register(lambda: print('teardown ran'))\n"
              "print('results written', end='')\ncli.exit_process(3)\n")
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}  # buffered, as usual
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=environment)
    assert done.returncode == 3
    assert done.stdout == "results written"  # flushed, and no teardown after it


def test_exit_process_exits_normally_while_ray_is_connected(monkeypatch):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: True))
    with pytest.raises(SystemExit) as exited:  # Ray's exit hook must run to stop the embedded Ray
        cli.exit_process(0)
    assert exited.value.code == 0


STOP_WHILE_WRITING = """
import gc
import numpy as np
import ray
from rnnimp import cli, options

gc.disable()  # collections happen only where this script asks for them
workers = cli.Workers(options.Execution(num_cpus=1), actors=False)
executor = workers.ready()
executor._baseline_shards = [ray.put(np.zeros(4)) for _ in range(3000)]  # the executor's references
for _ in range(3000):  # object references in reference cycles, as a run's frames and closures leave them
    cycle = {"ref": ray.put(np.zeros(4))}
    cycle["self"] = cycle
del cycle
wait = workers.stop_in_background()
left = executor._baseline_shards
unreachable = gc.collect()  # the driver writes (and Python collects) while Ray disconnects
wait()
print(f"results written; {len(left)} references left, {unreachable} unreachable objects", flush=True)
"""


def test_ray_stops_in_the_background_without_ending_the_driver():
    """Dropping object references while Ray's core worker shuts down ends the process (status 1, nothing
    on stdout): stop_in_background drops the executor's and collects those in reference cycles first, so that
    the collections the driver makes while it writes find none."""
    import subprocess
    import sys

    from jobtools import REPO

    done = subprocess.run([sys.executable, "-c", STOP_WHILE_WRITING], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    written = done.stdout.strip()
    assert written.startswith("results written; 0 references left, "), written
    assert int(written.split(", ")[1].split()[0]) < 1000, written  # not the 3000 cycles
