"""A model's inputs as rnnimp sees them: several named arrays sharing the series axis.

The data of a run is one float32 array per model input, in ``model.inputs``
order, all with the same number of series:

- a **sequence** input holds (series, time, features);
- a **static** input holds (series, features), e.g. covariates that do not
  change over time.

Features are numbered across inputs in the model's input order (the
*global* feature index): input 0's features first, then input 1's, and so
on. Targets, groups, noise scales and ablation values are indexed by it, so a
group may combine features of different inputs. :class:`InputLayout` maps a
global feature to its (input, column).

A sequence input may have a **mask value**: a step whose features all equal
it is padding (Keras' ``Masking`` convention). The mask is a property of the
data, computed from the unperturbed values; perturbations never touch padded
steps (see :mod:`rnnimp.perturb`). ``padding`` says at which end series were
padded (``post``: at the end, ``pre``: at the start); it aligns the real
steps of series of different lengths when a permutation exchanges them.

Pure numpy; never imports Ray, and TensorFlow/Keras only when asked about a model.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from . import validation
from .errors import InvalidParameterError

SEQUENCE = "sequence"
STATIC = "static"
PADDINGS = ("post", "pre")


@dataclass(frozen=True)
class InputLayout:
    """Names, per-series shapes and masks of a model's inputs, in ``model.inputs`` order.

    ``shapes[k]`` is (time, features) for a sequence input and (features,)
    for a static one; ``mask_values[k]`` is the padding value of a sequence
    input or None (no mask; always None for static inputs).
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    mask_values: tuple[float | None, ...] = ()
    padding: str = "post"

    def __post_init__(self) -> None:
        if not self.mask_values:
            object.__setattr__(self, "mask_values", (None,) * len(self.names))

    @classmethod
    def single(cls, time_steps: int, n_features: int, mask_value: float | None = None,
               padding: str = "post") -> "InputLayout":
        """One sequence input (time_steps, n_features): the layout of a single-input model."""
        return cls(("input",), ((int(time_steps), int(n_features)),), (mask_value,), padding)

    @property
    def n_inputs(self) -> int:
        return len(self.names)

    def kind(self, index: int) -> str:
        return SEQUENCE if len(self.shapes[index]) == 2 else STATIC

    def is_sequence(self, index: int) -> bool:
        return len(self.shapes[index]) == 2

    @property
    def feature_counts(self) -> tuple[int, ...]:
        return tuple(shape[-1] for shape in self.shapes)

    @functools.cached_property
    def offsets(self) -> tuple[int, ...]:
        """Global index of each input's first feature (computed once per layout)."""
        return tuple(int(v) for v in np.concatenate([[0], np.cumsum(self.feature_counts)[:-1]]))

    @property
    def n_features(self) -> int:
        return int(sum(self.feature_counts))

    @property
    def max_time_steps(self) -> int:
        """The longest sequence input's length (0 without sequence inputs)."""
        return max((shape[0] for shape in self.shapes if len(shape) == 2), default=0)

    def locate(self, feature: int) -> tuple[int, int]:
        """(input index, column within that input) of global ``feature``."""
        for index, (offset, count) in enumerate(zip(self.offsets, self.feature_counts)):
            if offset <= feature < offset + count:
                return index, feature - offset
        raise IndexError(f"feature {feature} is beyond the {self.n_features} features of the inputs")

    def parts(self, features: Sequence[int]) -> tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...]:
        """``features`` (global) split by input: (input index, global features, columns), in input order.

        Kept per layout and features: every unit of a target asks again.
        """
        known = self.__dict__.setdefault("_parts", {})  # a cache beside the frozen fields, not one of them
        key = tuple(features)
        if key not in known:
            known[key] = self._split(key)
        return known[key]

    def _split(self, features: tuple[int, ...]) -> tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...]:
        by_input: dict[int, list[tuple[int, int]]] = {}
        for feature in features:
            index, column = self.locate(feature)
            by_input.setdefault(index, []).append((feature, column))
        return tuple((index, tuple(f for f, _ in pairs), tuple(c for _, c in pairs))
                     for index, pairs in sorted(by_input.items()))


def real_steps(batch: np.ndarray, mask_value: float | None) -> np.ndarray | None:
    """(rows, time) bool: True at steps that are data, False at padding; None without a mask.

    ``batch``: (rows, time, features). A step is padding when all its features
    equal ``mask_value`` (as Keras' ``Masking`` layer decides).
    """
    if mask_value is None:
        return None
    return np.any(batch != np.float32(mask_value), axis=-1)


# ---------------------------------------------------------------------------
# Reading a Keras model's inputs


def model_input_names(model) -> list[str]:
    """The names of the model's inputs, in ``model.inputs`` order.

    The keys of a model built on a dict of inputs, else the input tensors' names.
    """
    struct = getattr(model, "_inputs_struct", None)
    keys = {id(tensor): str(key) for key, tensor in struct.items()} if isinstance(struct, dict) else {}
    return [keys.get(id(tensor)) or _tensor_name(tensor, index) for index, tensor in enumerate(model.inputs)]


def _tensor_name(tensor, index: int) -> str:
    name = getattr(tensor, "name", None) or f"input_{index}"
    return str(name).split(":")[0]


def model_input_shapes(model) -> list[tuple[int | None, ...]]:
    """Each input's per-series shape as the model declares it (None: any size)."""
    return [tuple(None if d is None else int(d) for d in tensor.shape[1:]) for tensor in model.inputs]


def masking_values(model) -> dict[str, float]:
    """{input name: mask_value} of the Keras ``Masking`` layers that read a model input directly."""
    import keras

    names = model_input_names(model)
    found: dict[str, float] = {}
    for layer in getattr(model, "layers", []):
        if not isinstance(layer, keras.layers.Masking):
            continue
        for node in getattr(layer, "_inbound_nodes", []):
            for tensor in getattr(node, "input_tensors", []):
                for index, model_input in enumerate(model.inputs):
                    if tensor is model_input:
                        found[names[index]] = float(layer.mask_value)
    if isinstance(model, keras.Sequential) and model.layers and isinstance(model.layers[0], keras.layers.Masking):
        found.setdefault(names[0], float(model.layers[0].mask_value))
    return found


# ---------------------------------------------------------------------------
# Validating data against the model


def input_arrays(model, X: Any, parameter: str = "X") -> tuple[list[str], list[np.ndarray]]:
    """The data ``X`` as one float32 C-contiguous array per model input, in ``model.inputs`` order.

    ``X`` is an array (single-input models), a dict {input name: array}, or a
    list/tuple of arrays in ``model.inputs`` order. Each array is (series,
    time, features) for a sequence input and (series, features) for a static
    one; all have the same number of series, finite real values, and match
    the sizes the model declares. Returns (input names, arrays).
    """
    names = model_input_names(model)
    declared = model_input_shapes(model)
    if isinstance(X, Mapping):
        unknown = [str(k) for k in X if str(k) not in names]
        if unknown:
            raise InvalidParameterError(parameter, f"must name inputs of the model ({', '.join(names)})",
                                        unknown[0])
        missing = [name for name in names if name not in {str(k) for k in X}]
        if missing:
            raise InvalidParameterError(parameter, f"must give data for every model input ({', '.join(names)})",
                                        f"no data for input {missing[0]!r}")
        given = {str(k): v for k, v in X.items()}
        values = [given[name] for name in names]
    elif isinstance(X, (list, tuple)):
        if len(X) != len(names):
            raise InvalidParameterError(
                parameter, f"must hold one array per model input, in model.inputs order ({', '.join(names)})",
                f"{len(X)} arrays")
        values = list(X)
    else:
        if len(names) != 1:
            raise InvalidParameterError(
                parameter, f"must be a dict {{input name: array}} for a model with {len(names)} inputs "
                f"({', '.join(names)})", f"one array of shape {np.shape(X)}")
        values = [X]
    arrays = [_input_array(parameter, name, value, shape, len(names) > 1)
              for name, value, shape in zip(names, values, declared)]
    counts = {name: len(array) for name, array in zip(names, arrays)}
    if len(set(counts.values())) > 1:
        raise InvalidParameterError(parameter, "must hold the same number of series in every input",
                                    ", ".join(f"{name}: {count}" for name, count in counts.items()))
    return names, arrays


def _input_array(parameter: str, name: str, value: Any, declared: tuple[int | None, ...],
                 named: bool) -> np.ndarray:
    # X['static'] in the API; --data static on the command line
    where = (f"{parameter} {name}" if parameter.startswith("-") else f"{parameter}[{name!r}]") if named else parameter
    if getattr(value, "is_dataset", False):  # a rnnimp.dataset.DatasetInput: checked by shape, values read by workers
        return _dataset_input(where, name, value, declared)
    array = np.asarray(value)
    if len(declared) == 2:
        kind, layout = "a sequence input", "(series, time, features)"
    elif len(declared) == 1:
        kind, layout = "a static input", "(series, features)"
    else:
        raise InvalidParameterError("model", "inputs must be (batch, time, features) or (batch, features)",
                                    f"input {name!r} of shape (batch, {', '.join(map(str, declared))})")
    if array.ndim != len(declared) + 1:
        got = {3: "a sequence array (series, time, features)", 2: "a static array (series, features)"}.get(
            array.ndim, f"an array of {array.ndim} dimensions")
        raise InvalidParameterError(where, f"input {name!r} is {kind} and needs {layout}",
                                    f"{got} of shape {array.shape}")
    array = validation.finite_float32(where, array)
    if any(d is not None and d != a for d, a in zip(declared, array.shape[1:])):
        shown = ", ".join("None" if d is None else str(d) for d in declared)
        raise InvalidParameterError(where, f"must match the model's input {name!r} shape (series, {shown})",
                                    f"shape {array.shape}")
    return array


def _dataset_input(where: str, name: str, value: Any, declared: tuple[int | None, ...]) -> Any:
    """A dataset input checked against the model's input ``name``: a sequence dataset (series, time,
    features) for a sequence input, a static one (series, features; one row per series) for a static input."""
    if value.ndim != len(declared) + 1:
        if len(declared) == 1:
            rule = (f"input {name!r} is a static input and needs a dataset with one row per series (series id "
                    "column and feature columns, no time column)")
        else:
            rule = f"input {name!r} is a sequence input and needs a long-form dataset (series, time, features)"
        raise InvalidParameterError(where, rule, f"{value.plan.location} of shape {value.shape}")
    if any(d is not None and d != a for d, a in zip(declared, value.shape[1:])):
        shown = ", ".join("None" if d is None else str(d) for d in declared)
        raise InvalidParameterError(where, f"must match the model's input {name!r} shape (series, {shown})",
                                    f"shape {value.shape}")
    return value


def resolve_mask_values(mask_value: float | Mapping[str, float] | None, model, names: Sequence[str],
                        arrays: Sequence[np.ndarray], parameter: str = "mask_value") -> tuple[float | None, ...]:
    """The mask value of each input: None for static inputs and unmasked sequence inputs.

    ``mask_value``: None (each sequence input takes the ``mask_value`` of a
    Keras ``Masking`` layer reading it directly, else no mask), a number (every
    sequence input), or {input name: number}. NaN and infinite values are refused.
    """
    sequence = [array.ndim == 3 for array in arrays]
    if mask_value is None:
        found = masking_values(model)
        return tuple(found.get(name) if is_seq else None for name, is_seq in zip(names, sequence))
    if isinstance(mask_value, Mapping):
        unknown = [str(k) for k in mask_value if str(k) not in names]
        if unknown:
            raise InvalidParameterError(parameter, f"must name inputs of the model ({', '.join(names)})",
                                        unknown[0])
        given = {str(k): _mask_number(v, parameter) for k, v in mask_value.items()}
        for name, is_seq in zip(names, sequence):
            if name in given and not is_seq:
                raise InvalidParameterError(parameter, "applies to sequence inputs only",
                                            f"{name} is a static input")
        return tuple(given.get(name) for name in names)
    value = _mask_number(mask_value, parameter)
    return tuple(value if is_seq else None for is_seq in sequence)


def _mask_number(value: Any, parameter: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InvalidParameterError(parameter, "must be a finite number", value)
    return float(value)


def check_padding(padding: Any) -> str:
    if padding not in PADDINGS:
        raise InvalidParameterError("padding", f"must be one of {', '.join(PADDINGS)}", padding)
    return padding


def layout_of(names: Sequence[str], arrays: Sequence[np.ndarray], mask_values: Sequence[float | None] = (),
              padding: str = "post") -> InputLayout:
    """The InputLayout of validated input arrays."""
    return InputLayout(tuple(names), tuple(tuple(int(d) for d in a.shape[1:]) for a in arrays),
                       tuple(mask_values) or (None,) * len(names), check_padding(padding))


def feature_names(names: Sequence[str], arrays: Sequence[np.ndarray],
                  given: Sequence[str] | Mapping[str, Sequence[str]] | None,
                  parameter: str = "feature_names") -> list[str]:
    """One distinct name per global feature.

    ``given``: None (``x1, x2, ...`` for one input; ``INPUT.x1, ...`` for
    each of several), a list of all names in global order, or {input name:
    names} for some inputs (the others get defaults). A name given for two
    inputs becomes ``INPUT.FEATURE`` in both.
    """
    counts = [a.shape[-1] for a in arrays]
    if given is not None and not isinstance(given, Mapping):
        return validation.distinct_names(parameter, [str(n) for n in given], sum(counts), list(given))
    per_input: list[list[str]] = []
    for name, count in zip(names, counts):
        chosen = None if given is None else given.get(name)
        if chosen is None:
            prefix = f"{name}." if len(names) > 1 else ""
            chosen = [f"{prefix}x{i + 1}" for i in range(count)]
        chosen = [str(n) for n in chosen]
        validation.distinct_names(f"{parameter} of input {name!r}", chosen, count, chosen)
        per_input.append(chosen)
    if len(names) == 1:
        return per_input[0]
    flat = [n for chosen in per_input for n in chosen]
    shared = {n for n in flat if flat.count(n) > 1}
    return [f"{name}.{n}" if n in shared else n for name, chosen in zip(names, per_input) for n in chosen]
