"""Moving a Keras model between processes and files without pickle.

A model travels as a :class:`ModelSpec`: its architecture as JSON plus its
weights as numpy arrays. Both are plain data, cheap to put in Ray's object
store, and rebuilt with Keras' safe deserialisation. The fingerprint (SHA-256
of architecture and weights) names the model in run metadata and keys the
per-process model cache.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .errors import InvalidParameterError


# What Keras imports at its own import when installed, for integrations that neither a worker nor a job
# uses: scikit-learn estimator wrappers, pandas DataFrames in fit, pyplot image galleries. About 1.5 of
# the 5 CPU-seconds that importing Keras costs each worker process on a 2-core machine.
KERAS_EXTRAS = ("sklearn", "pandas", "matplotlib.pyplot")


@contextlib.contextmanager
def keras_extras_held_back() -> Iterator[None]:
    """Within it, a first import of TensorFlow or Keras (TensorFlow imports Keras) leaves out :data:`KERAS_EXTRAS`.

    Only for processes rnnimp owns (workers, jobs): in them Keras' scikit-learn
    wrappers and its pandas input support stay off, as if those packages were
    not installed. The packages themselves can be imported afterwards.
    """
    held_back = [name for name in KERAS_EXTRAS if name not in sys.modules]
    for name in held_back:
        sys.modules[name] = None  # ``import name`` raises ImportError, which Keras takes as "not installed"
    try:
        yield
    finally:
        for name in held_back:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def configure_tensorflow(threads: int | None) -> None:
    """Quiet TF's logging (unless --verbose), if given pin its thread pools, turn GPU memory growth on,
    import Keras without its extras (:func:`keras_extras_held_back`), and freeze what is imported by then
    (``gc.freeze``: Python's garbage collector no longer walks it).

    For processes rnnimp owns (workers, jobs). Must run before TensorFlow
    executes its first op in this process; the environment variables are
    also read by TF at start-up. The import itself runs under
    :func:`rnnimp.logs.filtered_stderr`: TF prints its start-up notices
    before ``TF_CPP_MIN_LOG_LEVEL`` applies. ``TF_ENABLE_ONEDNN_OPTS`` is
    left alone (it changes the numerics).
    """
    from . import logs

    quiet = not logs.verbose()
    if quiet:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if threads is not None:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
        os.environ["TF_NUM_INTEROP_THREADS"] = str(threads)
    with logs.filtered_stderr(quiet), keras_extras_held_back():
        import keras  # noqa: F401 - imported with TensorFlow, here without its extras
        import tensorflow as tf
    logs.quiet_python_loggers()
    # The ~300,000 objects of those imports live as long as the process: out of the cyclic garbage
    # collector's reach, a full collection (the job's before it disconnects from Ray, and Python's own
    # now and then) takes milliseconds instead of 0.2-0.3 s. Once per process: a later call (a test's
    # in-process job) would also freeze whatever garbage is alive by then, for good.
    if gc.get_freeze_count() == 0:
        gc.freeze()

    if threads is not None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            # TF already initialised in this process: its pools are fixed now.
            pass
    enable_memory_growth()  # a driver or worker on a GPU node leaves room for the other processes on it


def enable_memory_growth() -> list[str]:
    """Turn TensorFlow's memory growth on for every GPU it sees; the names of those GPUs.

    Without it, the first op on a GPU reserves nearly all of its memory, so a
    second worker sharing that GPU could not start. Must run before any op
    initialises the GPUs (a GPU already initialised is left as it is).
    ``TF_FORCE_GPU_ALLOW_GROWTH=true`` in the environment asks the same of
    TF's allocator; the workers set both.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # this GPU is already initialised
            pass
    return [gpu.name for gpu in gpus]


def device_report() -> dict:
    """Where TensorFlow runs in this process: its devices, its GPUs' names, where it places an op by default.

    ``ops_placed_on`` is the device of a small matrix product placed by TF's
    defaults, as the forward pass is (nothing in rnnimp pins a device): a
    GPU when one is visible, else the CPU.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    product = tf.linalg.matmul(tf.ones((2, 2)), tf.ones((2, 2)))
    return {
        "tf_devices": [device.name for device in tf.config.list_logical_devices()],
        "gpu_names": [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus],
        "memory_growth": [bool(tf.config.experimental.get_memory_growth(gpu)) for gpu in gpus],
        "ops_placed_on": product.device,
    }


@dataclass(frozen=True)
class ModelSpec:
    """A Keras model as plain data: architecture JSON and weight arrays."""

    architecture_json: str
    weights: tuple[np.ndarray, ...]
    fingerprint: str

    @classmethod
    def from_model(cls, model) -> "ModelSpec":
        architecture_json = architecture(model)
        weights = tuple(np.asarray(w) for w in model.get_weights())
        return cls(architecture_json, weights, fingerprint(architecture_json, weights))


def architecture(model) -> str:
    """The model's architecture as canonical JSON, without its training (compile) settings."""
    config = json.loads(model.to_json())
    config.pop("compile_config", None)
    return json.dumps(config, sort_keys=True)


def fingerprint(architecture_json: str, weights: tuple[np.ndarray, ...]) -> str:
    """SHA-256 over the architecture and every weight's dtype, shape and bytes."""
    digest = hashlib.sha256(architecture_json.encode())
    for weight in weights:
        digest.update(str((weight.dtype.str, weight.shape)).encode())
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def check_model_path(path: str, parameter: str = "model") -> None:
    """Raise InvalidParameterError unless ``path`` names an existing ``.keras`` file (no TensorFlow needed)."""
    if not str(path).endswith(".keras"):
        raise InvalidParameterError(parameter, "must be a .keras file", str(path))
    if not os.path.isfile(path):
        raise InvalidParameterError(parameter, "must be an existing readable file", str(path))


def load_model(path: str, parameter: str = "model"):
    """Load a ``.keras`` file in Keras safe mode, or raise InvalidParameterError."""
    import keras

    check_model_path(path, parameter)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for corrupt archives
        raise InvalidParameterError(
            parameter, f"must be a valid Keras model file ({type(error).__name__}: {error})", str(path)
        ) from None


def model_to_bytes(model) -> bytes:
    """The model serialised in the native ``.keras`` format."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        with open(path, "rb") as handle:
            return handle.read()
