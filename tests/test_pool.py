"""ActorPool's recovery, driven through fake actors: no Ray processes, milliseconds per test.

The pool talks to Ray only through a backend (start_actor, ready, wait, get,
kill). FakeBackend implements it in memory: every reference completes when the
pool waits on it, in the order it was created, unless it belongs to an actor that never
becomes ready; ``get`` raises LostActor for a reference of an actor killed
before the result was fetched. ``hooks`` run a fault at the N-th wait.
"""

from __future__ import annotations

import collections
import itertools

import pytest

from rnnimp import cli
from rnnimp.distributed import (CALL_SAMPLE_STEPS, CALLS_PER_WORKER, ActorPool, LostActor, LostObject, exit_detail,
                                 unit_batches, unit_cost)
from rnnimp.errors import WorkersLostError

OOM_DETAIL = "Task was killed due to the node running low on memory."


class FakeActor:
    def __init__(self, index: int) -> None:
        self.index = index
        self.dead = False
        self.tasks: list = []

    def __repr__(self) -> str:
        return f"FakeActor({self.index}{', dead' if self.dead else ''})"


class FakeRef:
    created = itertools.count()

    def __init__(self, actor: FakeActor, value, pending: bool = False, lost_object: bool = False) -> None:
        self.actor, self.value, self.pending, self.lost_object = actor, value, pending, lost_object
        self.order = next(FakeRef.created)


class FakeBackend:
    def __init__(self, die_on_start=(), never_ready=(), detail: str = OOM_DETAIL) -> None:
        self.die_on_start, self.never_ready, self.detail = set(die_on_start), set(never_ready), detail
        self.actors: list[FakeActor] = []
        self.hooks: dict = {}  # wait number -> callable(backend)
        self.waits = 0

    def start_actor(self) -> FakeActor:
        actor = FakeActor(len(self.actors))
        self.actors.append(actor)
        return actor

    def ready(self, actor: FakeActor) -> FakeRef:
        if actor.index in self.die_on_start:
            actor.dead = True  # dies while importing TensorFlow
        return FakeRef(actor, actor.index, pending=actor.index in self.never_ready)

    def wait(self, refs: list, timeout: float) -> list:
        self.waits += 1
        hook = self.hooks.pop(self.waits, None)
        if hook is not None:
            hook(self)
        done = [ref for ref in refs if not ref.pending]
        return [min(done, key=lambda ref: ref.order)] if done else []  # first submitted, first done

    def get(self, ref: FakeRef):
        if ref.actor.dead:
            raise LostActor(self.detail)
        if ref.lost_object:
            raise LostObject("input lost")
        return ref.value

    def kill(self, actor: FakeActor) -> None:
        actor.dead = True


def submit(actor: FakeActor, task: int) -> FakeRef:
    actor.tasks.append(task)
    return FakeRef(actor, task * 10)


def kill(index: int):
    return lambda backend: setattr(backend.actors[index], "dead", True)


def run_all(pool: ActorPool, tasks, **kwargs) -> dict:
    results = {}
    for task, result in pool.run(tasks, submit, **kwargs):
        assert task not in results, f"task {task} yielded twice"
        results[task] = result
    return results


def test_every_task_once_without_faults():
    backend = FakeBackend()
    pool = ActorPool(2, backend=backend)
    pool.wait_until_ready()
    assert run_all(pool, range(20)) == {task: task * 10 for task in range(20)}
    assert pool.replaced == 0 and {a.index for a in pool.live} == {0, 1}


def test_actor_dying_mid_run_has_its_tasks_requeued_and_is_replaced():
    backend = FakeBackend()
    pool = ActorPool(2, backend=backend)
    pool.wait_until_ready()
    backend.hooks[4] = kill(0)  # actor 0 holds two tasks in flight
    assert run_all(pool, range(20)) == {task: task * 10 for task in range(20)}
    assert pool.replaced == 1
    assert [a.index for a in pool.live] == [1, 2]
    assert backend.actors[2].tasks, "the replacement got work"


def test_lost_input_object_is_recovered_then_resubmitted():
    backend = FakeBackend()
    pool = ActorPool(2, backend=backend)
    pool.wait_until_ready()
    lost_once = {7}
    recovered = []

    def submit_losing(actor, task):
        ref = submit(actor, task)
        if task in lost_once:
            lost_once.discard(task)
            ref.lost_object = True
        return ref

    def recover(task):  # as RayExecutor does: recompute the input on the pool itself
        recovered.append(task)
        assert [result for _, result in pool.run([task], submit)] == [task * 10]

    results = dict(pool.run(range(12), submit_losing, recover=recover))
    assert results == {task: task * 10 for task in range(12)}
    assert recovered == [7]


def test_lost_object_without_recovery_is_raised():
    backend = FakeBackend()
    pool = ActorPool(1, backend=backend)
    pool.wait_until_ready()
    with pytest.raises(LostObject):
        list(pool.run([1], lambda actor, task: FakeRef(actor, task, lost_object=True)))


def test_actor_dying_while_starting_is_replaced():
    backend = FakeBackend(die_on_start={0})
    pool = ActorPool(2, backend=backend)
    pool.wait_until_ready()
    assert pool.replaced == 1
    assert sorted(a.index for a in pool.live) == [1, 2]
    assert run_all(pool, range(6)) == {task: task * 10 for task in range(6)}


def test_replacement_dying_while_starting_is_replaced_again():
    backend = FakeBackend(die_on_start={0, 2, 3})
    pool = ActorPool(2, backend=backend)
    pool.wait_until_ready()
    assert pool.replaced == 3
    assert sorted(a.index for a in pool.live) == [1, 4]


def test_actor_lost_during_warm_up_is_replaced_and_the_replacement_warmed_up():
    backend = FakeBackend()
    pool = ActorPool(2, backend=backend)
    warmed = []

    def warm_up(actor):
        warmed.append(actor.index)
        if actor.index == 1:
            actor.dead = True  # dies while compiling
        return FakeRef(actor, None)

    pool.setup(warm_up)
    pool.wait_until_ready()
    assert pool.replaced == 1
    assert warmed == [0, 1, 2]  # the replacement ran the warm-up too
    assert sorted(a.index for a in pool.live) == [0, 2]


def test_replacement_starting_mid_run_joins_and_a_failed_one_is_replaced():
    backend = FakeBackend(die_on_start={2})  # the first replacement dies while starting
    pool = ActorPool(2, backend=backend)
    pool.wait_until_ready()
    backend.hooks[3] = kill(0)
    assert run_all(pool, range(30)) == {task: task * 10 for task in range(30)}
    assert pool.replaced == 2
    assert backend.actors[3].tasks, "the second replacement joined mid-run and got work"


def test_idle_actor_lost_between_runs_is_noticed_by_the_next_run():
    backend = FakeBackend()
    pool = ActorPool(2, backend=backend)
    pool.wait_until_ready()
    assert run_all(pool, range(4)) == {task: task * 10 for task in range(4)}
    backend.actors[0].dead = True  # between adaptive waves
    assert run_all(pool, range(4, 10)) == {task: task * 10 for task in range(4, 10)}
    assert pool.replaced == 1


def test_actor_that_never_becomes_ready_leaves_the_others_working():
    backend = FakeBackend(never_ready={1})
    pool = ActorPool(2, backend=backend, stall_timeout_s=0.0)
    pool.wait_until_ready()
    assert [a.index for a in pool.live] == [0]
    assert run_all(pool, range(5)) == {task: task * 10 for task in range(5)}
    assert backend.actors[0].tasks == list(range(5))


def test_no_actor_ever_ready_is_one_error():
    pool = ActorPool(2, backend=FakeBackend(never_ready={0, 1}), stall_timeout_s=0.0)
    with pytest.raises(WorkersLostError, match="no worker started"):
        pool.wait_until_ready()


def test_workers_that_keep_dying_give_up_with_rays_cause():
    backend = FakeBackend(die_on_start=set(range(100)))
    pool = ActorPool(2, backend=backend, max_losses=5)
    with pytest.raises(WorkersLostError) as caught:
        pool.wait_until_ready()
    assert pool.replaced == 6
    message = str(caught.value)
    assert "lost 6 workers" in message and OOM_DETAIL in message and "smaller --eval-batch-size" in message
    assert "\n" not in message


def test_give_up_mid_run_too():
    backend = FakeBackend(die_on_start=set(range(2, 100)))
    pool = ActorPool(2, backend=backend, max_losses=3)
    pool.wait_until_ready()
    backend.hooks[2] = kill(0)
    backend.hooks[6] = kill(1)
    with pytest.raises(WorkersLostError, match="lost 4 workers"):
        run_all(pool, range(50))


def test_give_up_is_one_line_and_exit_code_1_on_the_command_line(capsys):
    def main(argv):
        raise WorkersLostError("lost 11 workers in this run, giving up; Ray's exit detail of the last: x")

    assert cli.run(main, []) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().count("\n") == 0 and captured.err.startswith("error: lost 11 workers")


def test_exit_detail_is_rays_reason_on_one_line():
    message = ("The actor died unexpectedly before finishing this task.\n\tclass_name: _EvaluationWorker\n"
               "\tpid: 123\nThe actor is dead because its worker process has died. Worker exit type: "
               "UNEXPECTED_SYSTEM_EXIT Worker exit detail: Worker unexpectedly exits with a connection error "
               "code 2. End of file. There are some potential root causes. (1) The process is killed by SIGKILL "
               "by OOM killer due to high memory usage.")
    assert exit_detail(RuntimeError(message)) == ("Worker unexpectedly exits with a connection error code 2. "
                                                  "End of file.")
    ray_2_60 = ("The actor died unexpectedly before finishing this task.\n\tpid: 4669\nThe actor is dead because its "
                "worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly "
                "exits with a connection error code 2. End of file. Some common causes include: (1) the process was "
                "killed by the OOM killer due to high memory usage, (2) ray stop --force was called. The actor never "
                "ran - it was cancelled before it started running.")
    assert exit_detail(RuntimeError(ray_2_60)) == ("Worker unexpectedly exits with a connection error code 2. "
                                                   "End of file.")
    oom = ("The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit "
           "detail: Task was killed due to the node running low on memory.\nMemory on the node was 7.5GB / 8GB.")
    assert exit_detail(RuntimeError(oom)) == ("Task was killed due to the node running low on memory. "
                                              "Memory on the node was 7.5GB / 8GB.")
    assert exit_detail(RuntimeError("line one\nsomething else")) == "something else"


def test_ray_backend_sorts_rays_errors(monkeypatch):
    from ray.exceptions import ActorDiedError, ActorUnavailableError, ObjectLostError

    from rnnimp import distributed

    def raising(error):
        def get(ref):
            raise error
        return get

    backend = distributed.RayBackend(env_vars={})
    monkeypatch.setattr(distributed.ray, "get", raising(ActorDiedError()))
    with pytest.raises(LostActor):
        backend.get("ref")
    monkeypatch.setattr(distributed.ray, "get", raising(ActorUnavailableError("gone", None)))
    with pytest.raises(LostActor):
        backend.get("ref")
    monkeypatch.setattr(distributed.ray, "get", raising(ObjectLostError("ab" * 14, b"", "")))
    with pytest.raises(LostObject):
        backend.get("ref")
    broken = ActorDiedError()
    broken._actor_init_failed = True  # its __init__ raised: every replacement would fail the same way
    monkeypatch.setattr(distributed.ray, "get", raising(broken))
    with pytest.raises(WorkersLostError, match="a worker could not start"):
        backend.get("ref")
    monkeypatch.setattr(distributed.ray, "get", raising(ValueError("a bug in a task")))
    with pytest.raises(ValueError):
        backend.get("ref")


def test_driver_lane_computes_every_task_when_no_actor_ever_joins():
    backend = FakeBackend(never_ready={0, 1})
    pool = ActorPool(2, stall_timeout_s=0.5, backend=backend)
    computed = []

    def on_driver(task):
        computed.append(task)
        return task * 10

    assert run_all(pool, range(12), local=on_driver) == {task: task * 10 for task in range(12)}
    assert computed == list(range(12)) and not pool.live
    assert not any(actor.tasks for actor in backend.actors)


def test_driver_lane_shares_work_while_an_actor_is_missing_and_stops_once_all_are_live():
    class SlowBackend(FakeBackend):
        """Actor 0's results are not done yet at every other zero-timeout poll."""

        def wait(self, refs: list, timeout: float) -> list:
            done = super().wait(refs, timeout)
            return [] if timeout == 0 and self.waits % 2 else done

    backend = SlowBackend(never_ready={1})
    pool = ActorPool(2, backend=backend)
    computed = []

    def on_driver(task):
        computed.append(task)
        return task * 10

    assert run_all(pool, range(12), local=on_driver) == {task: task * 10 for task in range(12)}
    assert computed and backend.actors[0].tasks
    assert sorted(computed + backend.actors[0].tasks) == list(range(12))  # each task ran once, in one lane

    everyone = ActorPool(2, backend=FakeBackend())
    everyone.wait_until_ready()
    never = lambda task: pytest.fail("the driver lane ran with every actor live")  # noqa: E731
    assert run_all(everyone, range(12), local=never) == {task: task * 10 for task in range(12)}



def test_driver_lane_with_several_lanes_computes_that_many_tasks_at_once_each_once():
    import threading

    backend = FakeBackend(never_ready={0, 1})
    pool = ActorPool(2, stall_timeout_s=0.5, backend=backend)
    both_running = threading.Barrier(3, timeout=10)  # three lanes: only passes if three tasks run at once
    threads, computed = set(), []

    def on_driver(task):
        if task < 3:  # the first round
            both_running.wait()
        threads.add(threading.current_thread().name)
        computed.append(task)
        return task * 10

    assert run_all(pool, range(10), local=on_driver, lanes=3) == {task: task * 10 for task in range(10)}
    assert sorted(computed) == list(range(10))
    assert len({name for name in threads if name.startswith("rnnimp-driver-lane")}) == 3

# ---- batches of units: one actor call each ----------------------------------------------------------------

def test_unit_batches_hold_every_unit_once_one_shard_each_and_about_a_calls_work():
    from rnnimp.method import Layout, Target, plan_units

    layout = Layout.for_sample(1000, 100, 500)  # 2 shards of 5 batches
    units = plan_units(0, [Target("a", (0,)), Target("b", (1,))], range(30), layout.shards, steps=range(4))
    cost = unit_cost(layout, 4)
    assert cost == 5 * (100 * 4 + 2048)
    batches = unit_batches(units, cost, workers=2)
    assert collections.Counter(u for b in batches for u in b.units) == collections.Counter(units)
    assert all(u.shard == batch.shard for batch in batches for u in batch.units)
    sizes = [len(batch.units) for batch in batches]
    assert max(sizes) > 1 and max(sizes) * cost <= CALL_SAMPLE_STEPS  # several units, no more than a call's work
    assert max(sizes) - min(sizes) <= 1 and len(batches) >= CALLS_PER_WORKER * 2
    firsts = [units.index(batch.units[0]) for batch in batches]
    assert firsts == sorted(firsts)  # in plan order
    assert all(list(b.units) == sorted(b.units, key=units.index) for b in batches)


def test_units_too_big_to_share_a_call_keep_the_plan_order():
    from rnnimp.method import Layout, Target, plan_units

    layout = Layout.for_sample(4000, 100, 1000)  # 4 shards
    units = plan_units(0, [Target("a", (0,)), Target("b", (1,))], range(3), layout.shards)
    batches = unit_batches(units, CALL_SAMPLE_STEPS, workers=2)
    assert [batch.units for batch in batches] == [(unit,) for unit in units]


def test_unit_batches_keep_every_worker_busy_and_give_a_big_unit_a_call_of_its_own():
    from rnnimp.method import Layout, Target, plan_units

    layout = Layout.for_sample(100, 10, 100)
    units = plan_units(0, [Target("a", (0,))], range(10), layout.shards)  # 10 small units of one shard
    # at most ceil(10 / (CALLS_PER_WORKER x workers)) units a call, cut into equal batches
    for workers, sizes in ((1, [3, 3, 2, 2]), (2, [2] * 5), (3, [1] * 10)):
        assert [len(batch.units) for batch in unit_batches(units, unit_cost(layout, 1), workers)] == sizes
    assert [len(b.units) for b in unit_batches(units, CALL_SAMPLE_STEPS * 2, 1)] == [1] * 10
    assert unit_batches([], 1, 2) == []


def test_a_lost_baseline_shard_is_computed_again_once_for_all_its_batches_in_flight(monkeypatch):
    """Two batches of shard 0 are in flight with its baseline when that is lost: the first failure computes it
    again, the second is only resubmitted with the new one; every unit comes back once."""
    import numpy as np

    from rnnimp.distributed import RayExecutor
    from rnnimp.method import Layout, Metric, Target, plan_units
    from rnnimp.perturb import Perturbation
    from rnnimp.worker import Baseline, EvaluationJob, Settings

    class Method:
        def __init__(self, actor):
            self.actor = actor

        def remote(self, model, sample, baseline, labels, settings, units):
            return FakeRef(self.actor, [np.zeros((1, 2)) for _ in units], lost_object=baseline == "b0")

    class UnitActor(FakeActor):
        def __init__(self, index):
            super().__init__(index)
            self.unit_sums_many = Method(self)

    class UnitBackend(FakeBackend):
        def start_actor(self):
            actor = UnitActor(len(self.actors))
            self.actors.append(actor)
            return actor

    layout = Layout.for_sample(64, 32, 32)  # 2 shards of one batch
    units = plan_units(0, [Target("a", (0,)), Target("b", (1,))], range(8), layout.shards)  # 16 per shard
    settings = Settings(layout, Perturbation("noise", scales=(0.1, 0.1)), Metric())
    job = EvaluationJob(None, np.zeros((64, 3, 2), np.float32), None, settings)
    executor = RayExecutor(num_workers=2)
    executor.pool = ActorPool(2, backend=UnitBackend())
    executor.pool.wait_until_ready()
    executor._job, executor._job_refs = job, ("model", "sample", None)  # as if put in the object store
    executor.timings["units"] = 0.0
    recomputed = []

    def recompute(job, shard):
        recomputed.append(shard.index)
        executor._baseline_shards[shard.index] = f"b{shard.index} again"

    monkeypatch.setattr(executor, "_recompute_baseline", recompute)
    finished = [unit for unit, _ in executor.evaluate(job, Baseline(("b0", "b1"), 1), units)]
    assert sorted(finished, key=units.index) == units
    assert recomputed == [0]
