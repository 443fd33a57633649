"""A driver for tests/test_multinode.py: computes the baseline on the cluster at RAY_ADDRESS, prints
``BASELINE DONE``, waits for a line on stdin (the test kills a worker node meanwhile), evaluates the
units, and prints ``SAME`` if the effects are bit-identical to an in-process run of the same request.

Its model is the reference architecture with seeded, untrained weights; 4 shards of 4096 series, whose
baselines (160 KB each, above Ray's 100 KB inline limit) live in the object store of the node that
computed them.
"""

import sys

import numpy as np

from rnnimp import distributed, reference, sensitivity_importance
from rnnimp.worker import LocalExecutor


class PausingExecutor(distributed.RayExecutor):
    """Waits for the test between the baseline and the units."""

    def evaluate(self, job, baseline, units):
        print("BASELINE DONE", flush=True)
        sys.stdin.readline()
        yield from super().evaluate(job, baseline, units)


def main() -> None:
    model = reference.build_model(0)
    sample = reference.evaluation_sample(0, 4 * 4096)
    options = dict(n_repeats=2, random_state=5, batch_size=1024, shard_size=4096)
    distributed.connect()
    executor = PausingExecutor()
    on_cluster = sensitivity_importance(model, sample, executor=executor, **options)
    executor.shutdown()
    distributed.shutdown()
    in_process = sensitivity_importance(model, sample, executor=LocalExecutor(), **options)
    print("SAME" if np.array_equal(on_cluster.effects, in_process.effects) else "DIFFERENT", flush=True)


if __name__ == "__main__":
    main()
