"""distributed.shutdown stops every process of the embedded Ray, its autoscaler monitor killed first."""

from __future__ import annotations

import signal

import pytest

pytestmark = pytest.mark.slow


def test_shutdown_leaves_no_process_of_the_embedded_ray_and_kills_the_monitor_first(monkeypatch):
    import ray
    from ray._private import ray_constants
    from ray._private import worker as ray_worker

    from rnnimp import distributed

    if ray.is_initialized():
        pytest.skip("another Ray connection is open in this process")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    distributed.connect(num_cpus=1)
    try:
        processes = [info.process for infos in ray_worker._global_node.all_processes.values() for info in infos]
        monitor = ray_worker._global_node.all_processes[ray_constants.PROCESS_TYPE_MONITOR][0].process
        # The monitor goes first, killed: left to ray.shutdown, its SIGTERM handler waits on the GCS stopped before it.
        distributed._kill_monitor()
        assert monitor.returncode == -signal.SIGKILL
        assert all(process.poll() is None for process in processes if process is not monitor)
    finally:
        distributed.shutdown()
    assert not ray.is_initialized()
    assert all(process.poll() is not None for process in processes)
