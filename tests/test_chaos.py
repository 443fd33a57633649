"""Chaos: worker processes killed (SIGKILL) in every phase of a run; the effects stay bit-identical.

A helper thread watches this test's own Ray worker processes (descendants of
the test process, so never another Ray on the machine) and reads what each
is doing from its process title, which Ray sets to
``ray::_EvaluationWorker.<method>`` while a method runs. It kills, one after
the other with a pause between kills: a worker importing TensorFlow
(``__init__``), one compiling (``warm_up``), one computing the baseline
(``predict_shard``), one computing units (``unit_sums``), a replacement while
it starts, and units again, spread over adaptive waves.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

OPTIONS = dict(n_repeats=2, target_halfwidth=1e-12, max_repeats=4, wave_repeats=1, random_state=5,
               batch_size=32, shard_size=4096)  # small batches: each baseline shard takes a while to compute
N_SERIES = 16384
N_UNITS = 3 * 4 * (N_SERIES // 4096)  # features x repeats (2, then waves of 1 and 1) x shards
# (phase, method whose running worker is killed): start-up, warm-up, baseline, units, a starting replacement, units
KILL_PLAN = [("starting", "__init__"), ("compiling", "warm_up"), ("baseline", "predict_shard"),
             ("units", "unit_sums"), ("replacement starting", "__init__"), ("units again", "unit_sums")]


def descendants(root: int) -> list[int]:
    """Pids of every process below ``root`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class Workers:
    """This test's actor processes and what they run, cheap to poll: the process tree is rescanned every 0.2 s."""

    def __init__(self) -> None:
        self.candidates: list[int] = []
        self.scanned = 0.0

    def titles(self) -> dict[int, str]:
        if time.monotonic() - self.scanned > 0.2:
            self.candidates, self.scanned = descendants(os.getpid()), time.monotonic()
        found = {pid: title(pid) for pid in self.candidates}
        return {pid: text for pid, text in found.items() if text.startswith("ray::_EvaluationWorker")}


class Killer(threading.Thread):
    """Works through KILL_PLAN: waits for a worker running the method, SIGKILLs it, pauses, next."""

    def __init__(self, pause_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pause_s = pause_s
        self.stop = threading.Event()
        self.kills: list[tuple[str, str]] = []  # (phase, title of the killed process)

    def run(self) -> None:
        workers = Workers()
        for phase, method in KILL_PLAN:
            while not self.stop.is_set():
                victims = [(pid, text) for pid, text in workers.titles().items() if f".{method}" in text]
                if victims:
                    pid, text = victims[0]
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    self.kills.append((phase, text))
                    break
                time.sleep(0.002)
            if self.stop.wait(self.pause_s):
                return


def test_workers_killed_in_every_phase_change_nothing(monkeypatch, capfd, caplog):
    from rnnimp import distributed, reference, sensitivity_importance
    from rnnimp.modelio import architecture

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    model = reference.build_model(5)  # untrained weights: the effects are what they are, bit for bit
    sample = reference.evaluation_sample(5, N_SERIES)
    undisturbed = sensitivity_importance(model, sample, **OPTIONS)  # in-process, bit-identical to Ray

    distributed.connect(num_cpus=2)
    killer = Killer()
    try:
        killer.start()
        executor = distributed.RayExecutor()
        executor.warm_up(architecture(model), OPTIONS["batch_size"], ((sample.shape[1], sample.shape[2]),))
        disturbed = sensitivity_importance(model, sample, executor=executor, **OPTIONS)
        replaced = executor.pool.replaced
        executor.shutdown()
    finally:
        killer.stop.set()
        killer.join(timeout=10)
        distributed.shutdown()
    printed = capfd.readouterr()
    print("kills:", killer.kills)
    assert [phase for phase, _ in killer.kills] == [phase for phase, _ in KILL_PLAN], killer.kills
    assert replaced == len(KILL_PLAN)
    assert disturbed.metadata["n_units"] == undisturbed.metadata["n_units"] == N_UNITS
    np.testing.assert_array_equal(disturbed.effects, undisturbed.effects)
    # each loss is one rnnimp warning with Ray's exit detail; Ray's own notice of it is not printed
    losses = [r.getMessage() for r in caplog.records if r.getMessage().startswith("a worker was lost (")]
    assert len(losses) == len(KILL_PLAN), losses
    assert "A worker died or was killed" not in printed.out + printed.err
