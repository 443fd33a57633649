"""Processes rnnimp owns (workers, jobs) import Keras without the integrations they never use, and freeze
what they imported out of the garbage collector's way."""

import subprocess
import sys

CHECK = """
import sys
from rnnimp.modelio import KERAS_EXTRAS, configure_tensorflow

import gc
configure_tensorflow(1)
assert "keras" in sys.modules, "configure_tensorflow did not import Keras"
frozen = gc.get_freeze_count()  # TF's and Keras' objects, left out of every later collection
assert frozen > 100_000, f"only {frozen} objects frozen"
configure_tensorflow(1)
assert gc.get_freeze_count() == frozen, "a second call froze more"
loaded = [name for name in KERAS_EXTRAS if name in sys.modules]
assert not loaded, f"imported with Keras: {loaded}"

import numpy as np
import keras
model = keras.Sequential([keras.Input((4, 2)), keras.layers.LSTM(3), keras.layers.Dense(1)])
assert model.predict(np.ones((5, 4, 2), np.float32), verbose=0).shape == (5, 1)

import matplotlib.pyplot, pandas, sklearn.base  # still importable by whoever needs them later
print("ok")
"""


def test_configure_tensorflow_imports_keras_without_its_extras_freezes_them_and_leaves_them_importable():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
