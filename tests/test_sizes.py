"""The size arithmetic of rnnimp.sizes, alone (no Ray); and its refusal on the command line."""

from __future__ import annotations

import pytest

from rnnimp import sizes
from rnnimp.errors import TooLargeError

GIB = 1 << 30


def run_sizes(**changes) -> sizes.RunSizes:
    values = dict(n_series=1000, time_steps=10, n_features=3, n_outputs=10, batch_size=100, shard_size=500,
                  n_weights=908, activations_per_series=1000)
    values.update(changes)
    return sizes.RunSizes(**values)


def test_bytes_of_sample_baseline_and_store():
    s = run_sizes(has_labels=True)
    assert s.sample_bytes == 1000 * 10 * 3 * 4
    assert s.baseline_bytes == s.labels_bytes == 1000 * 10 * 4
    assert sizes.store_bytes(s) == s.sample_bytes + 2 * s.baseline_bytes + 908 * 4


def test_worker_bytes_grow_with_batch_and_shard_not_with_series():
    base = sizes.worker_bytes(run_sizes())
    assert base > sizes.WORKER_BASE_BYTES
    assert sizes.worker_bytes(run_sizes(batch_size=200)) > base
    assert sizes.worker_bytes(run_sizes(shard_size=1000)) > base
    assert sizes.worker_bytes(run_sizes(n_series=2000)) == base  # the sample lives in the object store
    assert sizes.worker_bytes(run_sizes(n_series=2000, permute=True)) > base  # a permutation of all series
    # batches and shards never exceed the sample
    assert sizes.worker_bytes(run_sizes(batch_size=10**6, shard_size=10**6)) == sizes.worker_bytes(
        run_sizes(batch_size=1000, shard_size=1000))


def test_fitting_run_passes_quietly():
    assert sizes.check(run_sizes(), sizes.Capacity(GIB, 10 * GIB, 4 * GIB)) == []


def test_sample_larger_than_store_and_disk_is_refused_with_sizes_and_advice():
    big = run_sizes(n_series=10_000_000, time_steps=100, n_features=10)  # 37 GiB of sample
    with pytest.raises(TooLargeError) as caught:
        sizes.check(big, sizes.Capacity(2 * GIB, 8 * GIB, 100 * GIB))
    message = str(caught.value)
    assert "10000000 series x 100 steps x 10 features, 37.25 GiB" in message
    assert "2.00 GiB plus 8.00 GiB of free disk" in message and "fewer series" in message
    assert "\n" not in message


def test_sample_larger_than_store_only_warns_that_it_spills():
    big = run_sizes(n_series=10_000_000)
    warnings = sizes.check(big, sizes.Capacity(GIB, 100 * GIB, 100 * GIB))
    assert len(warnings) == 1 and "on disk" in warnings[0]


def test_batch_too_large_for_a_worker_names_eval_batch_size():
    huge_batch = run_sizes(n_series=10**6, batch_size=10**6, shard_size=10**6, activations_per_series=10_000)
    with pytest.raises(TooLargeError, match=r"a worker needs about .* but has 4.00 GiB; use a smaller --eval-batch-size"):
        sizes.check(huge_batch, sizes.Capacity(100 * GIB, 0, 4 * GIB))


def test_shard_too_large_for_a_worker_names_shard_size():
    many_outputs = run_sizes(n_series=10**7, batch_size=100, shard_size=10**7, n_outputs=100)
    with pytest.raises(TooLargeError) as caught:
        sizes.check(many_outputs, sizes.Capacity(1000 * GIB, 0, 4 * GIB))
    assert "smaller --shard-size (now 10000000" in str(caught.value)
    assert "--eval-batch-size" not in str(caught.value)


def test_model_sizes_of_the_reference_lstm():
    from rnnimp import reference

    n_weights, activations, n_outputs = sizes.model_sizes(reference.build_model(0))
    assert n_weights == 908 and n_outputs == 10
    # outputs 10x10 + 10x5 + 10x1 + 10, gates 4x(10+5+1)x10
    assert activations == 100 + 50 + 10 + 10 + 4 * 16 * 10


def test_cluster_capacity_is_the_smallest_nodes_per_cpu(monkeypatch, tmp_path):
    from rnnimp import distributed

    nodes = [
        {"Alive": True, "Resources": {"CPU": 4.0, "memory": 16.0 * GIB, "object_store_memory": 6.0 * GIB}},
        {"Alive": True, "Resources": {"CPU": 2.0, "memory": 6.0 * GIB, "object_store_memory": 2.0 * GIB}},
        {"Alive": False, "Resources": {"CPU": 8.0, "memory": 1.0 * GIB, "object_store_memory": 0.5 * GIB}},
        {"Alive": True, "Resources": {"memory": 0.5 * GIB, "object_store_memory": 8.0 * GIB}},  # head, no CPU
    ]
    monkeypatch.setattr(distributed.ray, "nodes", lambda: nodes)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    capacity = distributed.cluster_capacity()
    assert capacity.object_store_bytes == 2 * GIB
    assert capacity.worker_memory_bytes == 3 * GIB
    assert capacity.spill_bytes > 0
    monkeypatch.setattr(distributed.ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 1.0}}])
    assert distributed.cluster_capacity().worker_memory_bytes == sizes.UNLIMITED
