"""Will a run fit? The memory arithmetic of a run, refused up front when it cannot work.

Pure arithmetic on sizes in bytes: no Ray, no TensorFlow (the model is only
inspected through its ``layers``, ``output`` shapes and ``count_params()``).
The Ray side (:func:`rnnimp.distributed.check_sizes`) supplies the capacity:
the object store and the memory per worker of the smallest node.

Where a run's data lives:

* object store of the driver's node: the sample (series × time × features
  float32), the labels, the model's weights, and up to the whole baseline
  (series × outputs float32, one object per shard) when that node's workers
  computed it. Past the store's capacity Ray writes objects to disk (slow);
  past the store plus the free disk space of Ray's temporary folder, a run
  cannot work.
* each worker: its process (TensorFlow, Keras, Ray: :data:`WORKER_BASE_BYTES`,
  measured), two copies of the weights, the batch buffer and the model's
  activations for one batch of ``batch_size`` series, float64 terms of one
  batch, the predictions of one shard while the baseline is computed, and a
  permutation of the series (``permute``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import TooLargeError

FLOAT32 = 4
FLOAT64 = 8
WORKER_BASE_BYTES = 1 << 30  # a worker with TF, Keras and Ray imported and a model compiled: ~0.85 GiB measured
UNLIMITED = 1 << 62  # a capacity nobody reported
ACTIVATION_HEADROOM = 3  # XLA temporaries and Keras' intermediate copies, per activation value


@dataclass(frozen=True)
class RunSizes:
    """The shapes of a run that decide its memory (counts, not bytes)."""

    n_series: int
    time_steps: int
    n_features: int
    n_outputs: int
    batch_size: int
    shard_size: int
    n_weights: int  # float32 parameters of the model
    activations_per_series: int  # float32 values the forward pass of one series holds
    has_labels: bool = False
    permute: bool = False
    sample_in_store: bool = True  # False: dataset input, read by the workers (only its plan is in the store)
    cache_bytes: int = 0  # dataset input: each worker's shard cache budget

    @property
    def sample_bytes(self) -> int:
        """Bytes of the sample in the object store (0 for dataset input: the workers read their shards)."""
        if not self.sample_in_store:
            return 0
        return self.n_series * self.time_steps * self.n_features * FLOAT32

    @property
    def labels_bytes(self) -> int:
        return self.n_series * self.n_outputs * FLOAT32 if self.has_labels else 0

    @property
    def weights_bytes(self) -> int:
        return self.n_weights * FLOAT32

    @property
    def baseline_bytes(self) -> int:
        return self.n_series * self.n_outputs * FLOAT32


@dataclass(frozen=True)
class Capacity:
    """What the cluster offers: bytes of the smallest object store and of memory per worker (one CPU)."""

    object_store_bytes: int
    spill_bytes: int  # free disk where Ray writes objects that do not fit in the store
    worker_memory_bytes: int


def store_bytes(sizes: RunSizes) -> int:
    """Bytes the driver's node's object store must hold at most: sample, labels, weights, whole baseline."""
    return sizes.sample_bytes + sizes.labels_bytes + sizes.weights_bytes + sizes.baseline_bytes


def worker_bytes(sizes: RunSizes) -> int:
    """Estimated peak memory of one worker process (bytes)."""
    batch = min(sizes.batch_size, sizes.n_series)
    shard = min(sizes.shard_size, sizes.n_series)
    working = (
        2 * sizes.weights_bytes
        + batch * sizes.time_steps * sizes.n_features * FLOAT32  # batch buffer
        + ACTIVATION_HEADROOM * batch * sizes.activations_per_series * FLOAT32
        + 3 * batch * sizes.n_outputs * FLOAT64  # perturbed predictions and terms as float64
        + 2 * shard * sizes.n_outputs * FLOAT32  # a shard's predictions, in pieces then joined
        + (sizes.n_series * FLOAT64 if sizes.permute else 0)
        + sizes.cache_bytes
    )
    return WORKER_BASE_BYTES + working


def gib(n_bytes: float) -> str:
    """Bytes in readable units: "1.50 GiB", "12.0 MiB"."""
    if n_bytes >= 1 << 30:
        return f"{n_bytes / (1 << 30):.2f} GiB"
    return f"{n_bytes / (1 << 20):.1f} MiB"


def problems(sizes: RunSizes, capacity: Capacity) -> tuple[list[str], list[str]]:
    """(refusals, warnings): one sentence each with the sizes and what to change."""
    refusals, warnings = [], []
    needed = store_bytes(sizes)
    what = (f"the sample ({sizes.n_series} series x {sizes.time_steps} steps x {sizes.n_features} features, "
            f"{gib(sizes.sample_bytes)}) and its baseline ({gib(sizes.baseline_bytes)})")
    if needed > capacity.object_store_bytes + capacity.spill_bytes:
        refusals.append(
            f"{what} need {gib(needed)} of Ray's object store, which holds {gib(capacity.object_store_bytes)} "
            f"plus {gib(capacity.spill_bytes)} of free disk to spill to; use fewer series "
            "(a smaller --samples or --data), or a node with a larger object store")
    elif needed > capacity.object_store_bytes:
        warnings.append(
            f"{what} need {gib(needed)}, more than Ray's object store ({gib(capacity.object_store_bytes)}); "
            "Ray will keep the rest on disk, which is slow")
    per_worker = worker_bytes(sizes)
    if per_worker > capacity.worker_memory_bytes:
        batch_part = ACTIVATION_HEADROOM * min(sizes.batch_size, sizes.n_series) * sizes.activations_per_series * FLOAT32
        shard_part = 2 * min(sizes.shard_size, sizes.n_series) * sizes.n_outputs * FLOAT32
        advice = []
        if batch_part > per_worker / 4:
            advice.append(f"a smaller --eval-batch-size (now {sizes.batch_size}: {gib(batch_part)} of activations)")
        if shard_part > per_worker / 4:
            advice.append(f"a smaller --shard-size (now {sizes.shard_size}: {gib(shard_part)} of predictions)")
        if sizes.permute and sizes.n_series * FLOAT64 > per_worker / 4:
            advice.append("fewer series")
        advice.append("fewer workers per node (--num-cpus) or nodes with more memory")
        refusals.append(
            f"a worker needs about {gib(per_worker)} (batches of {sizes.batch_size} series, shards of "
            f"{sizes.shard_size}) but has {gib(capacity.worker_memory_bytes)}; use " + ", or ".join(advice))
    return refusals, warnings


def check(sizes: RunSizes, capacity: Capacity) -> list[str]:
    """Raise TooLargeError (one line) if the run cannot fit; else return warnings to show."""
    refusals, warnings = problems(sizes, capacity)
    if refusals:
        raise TooLargeError("; and ".join(refusals))
    return warnings


def model_sizes(model) -> tuple[int, int, int]:
    """(float32 weights, activations per series, outputs per series) of a Keras model, from its layers.

    Activations: every layer's output values per series; a recurrent layer
    (one with ``units`` on a sequence) also holds its four gates at every step.
    """
    activations = 0
    for layer in getattr(model, "layers", []):
        outputs = layer.output if isinstance(layer.output, (list, tuple)) else [layer.output]
        for output in outputs:
            activations += math.prod(int(d) for d in output.shape[1:] if d is not None)
        units = getattr(layer, "units", None)
        input_shape = getattr(getattr(layer, "input", None), "shape", None)
        if units and input_shape is not None and len(input_shape) == 3 and input_shape[1] is not None:
            activations += 4 * int(units) * int(input_shape[1])
    model_outputs = model.outputs if isinstance(model.outputs, (list, tuple)) else [model.outputs]
    n_outputs = sum(math.prod(int(d) for d in output.shape[1:] if d is not None) for output in model_outputs)
    return int(model.count_params()), activations, n_outputs
