"""Shared fixtures: small hand-built Keras models and a trained reference model."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "RNNIMP_XLA_CACHE" not in os.environ:  # the jobs' XLA cache: one private folder per test run, not ~/.cache
    os.environ["RNNIMP_XLA_CACHE"] = tempfile.mkdtemp(prefix="rnnimp-test-xla-")
    atexit.register(shutil.rmtree, os.environ["RNNIMP_XLA_CACHE"], ignore_errors=True)
if "RAY_TMPDIR" not in os.environ:
    # The embedded Rays the tests start (and the jobs they run) keep their session folders (logs, sockets,
    # about 0.3 MB each, 27 per run) here, removed at exit (after Ray's own exit hook, registered later,
    # has stopped them), not in /tmp/ray, where they would pile up run after run. Short: unix socket
    # paths are limited.
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    atexit.register(shutil.rmtree, os.environ["RAY_TMPDIR"], ignore_errors=True)

import numpy as np
import pytest


def linear_lstm_free_model(weights_per_feature: list[float], time_steps: int = 4):
    """A Keras model y[s, t] = sum_f w_f * x[s, t, f] (a Dense layer applied per step).

    Its outputs are linear in the inputs, so the RMS change caused by noise
    on feature f is |w_f| times the RMS of that noise: importance by hand.
    """
    import keras

    n_features = len(weights_per_feature)
    model = keras.Sequential([
        keras.Input((time_steps, n_features)),
        keras.layers.Dense(1, use_bias=False),
        keras.layers.Flatten(),
    ])
    model.layers[0].set_weights([np.asarray(weights_per_feature, dtype=np.float32).reshape(n_features, 1)])
    return model


# Test modules by how long they take, longest first (measured on the 2-core machine): they run first, so
# that with pytest-xdist's workers the short ones fill the end of the run. The others follow in file order.
LONGEST_MODULES = (
    "test_multinode", "test_benchmark_job", "test_datawire_ray", "test_ray_job_submit", "test_faults", "test_chaos",
    "test_gpu", "test_output", "test_lstm", "test_distributed", "test_runner", "test_inputs_ray", "test_driver_lane",
    "test_xlacache", "test_stats_coverage", "test_training", "test_masks", "test_importance_job", "test_jobs_cli",
    "test_cli_start",
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Longest modules first: ``--dist loadfile --no-loadscope-reorder`` hands whole modules to pytest-xdist's
    workers in this order (a module's fixtures, such as a local Ray or a cluster, are set up once)."""
    rank = {name: position for position, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.module.__name__ if item.module else "", len(rank)))  # stable


@pytest.fixture(scope="session")
def reference_training(tmp_path_factory):
    """The reference LSTM trained once per test run, on 3 of its 5 epochs (about 9 s with XLA).

    3 epochs reach a loss of 0.433 (5: 0.432) and an x3 effect 17 times smaller than x1's and x2's
    (2 epochs: 0.445 and 12 times), what tests/test_reference.py checks with a margin. With pytest-xdist,
    the first worker that needs it trains it and saves it; the others load it.
    """
    from rnnimp import reference

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return reference.train_model(seed=0, epochs=3)
    import json

    from filelock import FileLock

    from rnnimp.modelio import load_model

    shared = tmp_path_factory.getbasetemp().parent / "reference_training"  # common to the run's workers
    with FileLock(f"{shared}.lock"):
        if (shared / "losses.json").exists():
            losses = json.loads((shared / "losses.json").read_text())
            return reference.TrainingResult(load_model(str(shared / "model.keras")), losses["final"],
                                            tuple(losses["epochs"]))
        training = reference.train_model(seed=0, epochs=3)
        shared.mkdir(exist_ok=True)
        training.model.save(shared / "model.keras")
        (shared / "losses.json").write_text(json.dumps({"final": training.final_loss,
                                                        "epochs": list(training.losses)}))
        return training


@pytest.fixture(scope="session")
def reference_model_file(reference_training, tmp_path_factory):
    """The session's trained reference LSTM as a ``model.keras`` file, for jobs run with ``--model``
    instead of training their own."""
    path = tmp_path_factory.mktemp("reference_model") / "model.keras"
    reference_training.model.save(path)
    return path


@pytest.fixture(scope="module")
def local_ray():
    """One embedded local Ray of 2 CPUs per module that asks for it; always shut down (modules that
    need their own per test define their own ``local_ray``)."""
    from rnnimp import distributed

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RAY_ADDRESS", raising=False)
        distributed.connect(2)
        yield distributed
        distributed.shutdown()
