"""The one catalogue of run options, and their resolution into a validated :class:`Request`.

Each option is defined once, as a field of :class:`Options` (what a run
computes) or :class:`Execution` (where and how a job runs it), with its
default and a :class:`Spec`: its command-line flag, help text, choices,
which jobs offer it, whether it only says which repeats a run computed.
Everything else is derived from that definition: the jobs' argparse options
and the command line -> API mapping (:mod:`rnnimp.cli`), the names errors
use, the configuration a run records (:meth:`Options.configuration`), and
the keys :mod:`rnnimp.merge` may let differ (:data:`REPEAT_KEYS`). Adding an
option means adding a field here and using it.

:func:`prepare` checks options against a model and data before any model
runs; its errors name the API parameters, or, given the jobs' ``names``,
their command-line options (also inside the rule: ``--max-repeats: must be
at least --repeats (30)``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from . import logs, stats, validation
from .errors import API_NAMES, InvalidParameterError, Names
from .inputs import (PADDINGS, InputLayout, feature_names as input_feature_names, input_arrays, layout_of,
                     model_input_names, resolve_mask_values)
from .method import LOSSES, METRICS, Layout, Measures, Metric, Target
from . import conditional
from .conditional import DEFAULT_STRATA
from .dataset import DEFAULT_CACHE_MIB, DatasetInput, Moments, is_dataset, is_dataset_source, local_moments, \
    open_input, open_plan, split_budget, value_moments
from .perturb import PERTURBATIONS as _PERTURB_KINDS, Perturbation

CONDITIONAL = "conditional-permute"
PERTURBATIONS = (*_PERTURB_KINDS, CONDITIONAL)
from .worker import Settings

JOBS = ("seed_importance", "importance")  # the importance jobs, by module name under jobs/
JOB_EXECUTORS = ("ray", "local")  # where a job evaluates: Ray workers, or its own process on threads


@dataclass(frozen=True)
class Spec:
    """How an option appears beyond the API.

    flag : its command-line option; None: API only.
    help : its ``--help`` text (``%(default)s`` is filled in).
    type : the command-line value's type (argparse ``type``); a bool option
        is a switch.
    choices, metavar : as argparse's.
    repeatable : the flag may be given several times (argparse ``append``).
    parse : turns the command-line value into the API value.
    jobs : the jobs that offer the flag.
    repeat_key : it only says which repeats a run computed, so runs that
        differ in it merge (see :mod:`rnnimp.merge`).
    recorded : kept in the run's configuration under the option's name.
    only_with : (option, value): it only matters when that option has that
        value, and is recorded as None otherwise.
    old_flags : former spellings of the flag, still accepted with a note.
    on_parse : for a switch: called as soon as the command line names it,
        before anything else runs (``--verbose`` must act before TensorFlow
        is imported).
    """

    flag: str | None = None
    help: str = ""
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    repeatable: bool = False
    parse: Callable[[Any], Any] | None = None
    jobs: tuple[str, ...] = JOBS
    repeat_key: bool = False
    recorded: bool = True
    only_with: tuple[str, Any] | None = None
    old_flags: tuple[str, ...] = ()
    on_parse: Callable[[], None] | None = None


def _option(default: Any, **spec: Any) -> Any:
    return field(default=default, metadata={"rnnimp": Spec(**spec)})


def spec_of(option: dataclasses.Field) -> Spec:
    return option.metadata["rnnimp"]


def parse_groups(values: Sequence[str]) -> dict[str, list[str | int]]:
    """``["NAME=f1,f2", ...]`` as {NAME: [f1, f2]}; members are names or 0-based indexes (digits)."""
    groups: dict[str, list[str | int]] = {}
    for value in values:
        name, _, members = value.partition("=")
        names = [m.strip() for m in members.split(",") if m.strip()]
        if not name.strip() or not names or name.strip() in groups:
            raise InvalidParameterError("--group", "must be NAME=F1,F2 with a new name and at least one feature", value)
        groups[name.strip()] = [int(m) if m.isdigit() else m for m in names]
    return groups


def split_names(value: str | None) -> list[str] | None:
    """``"a, b,c"`` as ["a", "b", "c"] (None stays None)."""
    return None if value is None else [name.strip() for name in value.split(",")]


def parse_mask_values(values: Sequence[str]) -> float | dict[str, float] | None:
    """``--mask-value`` values: one number for every sequence input, or NAME=V per input (None: none given)."""
    if not values:
        return None
    parsed: dict[str, float] = {}
    for value in values:
        name, separator, number = value.rpartition("=")
        try:
            mask = float(number)
        except ValueError:
            mask = math.nan
        if not math.isfinite(mask) or (separator and not name):
            raise InvalidParameterError("--mask-value", "must be a finite number, or NAME=number", value)
        parsed[name] = mask
    if "" in parsed:
        if len(values) > 1:
            raise InvalidParameterError("--mask-value", "must be one number, or NAME=number per input", list(values))
        return parsed[""]
    return parsed


def parse_metrics(value: str) -> str | tuple[str, ...]:
    """``"rms"`` stays "rms"; ``"rms,mae"`` is ("rms", "mae")."""
    names = tuple(name.strip() for name in value.split(","))
    return names[0] if len(names) == 1 else names


def metric_names(metric: str | Sequence[str]) -> tuple[str, ...]:
    """The metrics asked for, as a tuple (one name, or several)."""
    return (metric,) if isinstance(metric, str) else tuple(metric)


def _applies(value: Any, wanted: Any) -> bool:
    """Whether an option's ``only_with`` condition holds (a list of metrics holds if it contains ``wanted``)."""
    if isinstance(value, (list, tuple)):
        return wanted in value
    return value == wanted


DEFAULT_BATCH_SIZE = 4096
DEFAULT_SHARD_SIZE = 65536


@dataclass(frozen=True)
class Options:
    """Every option of an importance run, with its default.

    n_repeats : repeats per target (>= 2, for the intervals); with
        ``target_halfwidth``, the first wave.
    first_repeat : index of the first repeat: runs of repeats 0..14 and
        15..29 draw exactly the units of one run of 30 (see jobs.merge).
    perturbation : ``"noise"`` (add N(0, noise_scale²), or noise_relative ×
        the feature's standard deviation), ``"permute"`` (exchange a feature's
        whole trajectory between series) or ``"ablate"`` (replace by
        ``ablate_value``: "mean", "zero" or a number).
    metric : ``"rms"`` or ``"mae"`` output change, or ``"loss-increase"``
        (``loss`` "mse" or "binary-crossentropy" against labels ``y``,
        (series, ...) with one label per model output); or several of them,
        e.g. ("rms", "mae"), all from one set of forward passes, each equal
        bit for bit to a run of it alone.
    per_output, output_names : also the effect on each output value (the
        model's outputs flattened per series, in order), with names.
    condition_on, strata : with perturbation ``"conditional-permute"``,
        exchange a target's values only between series in the same stratum
        of these features' per-series means (``strata`` quantile bins each;
        see :mod:`rnnimp.conditional`).
    segments, segment_column : one label per series (a month, a site):
        importance per segment, from the same units; ``segment_column`` is
        the Parquet column the jobs read them from.
    groups : {name: [feature names or indexes]} perturbed jointly, reported
        as extra rows after the features.
    per_step : a (targets, steps) map: perturb at each time step t alone.
    resample : each repeat also weights the series by a Poisson(1)
        bootstrap draw, so intervals include the choice of series.
    random_state : the one seed every draw derives from.
    confidence, interval : level of the intervals; the bootstrap method
        ("bca" where defined, else "percentile"; or "percentile", or "t").
    target_halfwidth, relative, max_repeats, wave_repeats : adaptive
        repeats: after the first wave, add waves of ``wave_repeats`` to the
        targets whose t-interval half-width exceeds ``target_halfwidth``
        (times |mean| if ``relative``), up to ``max_repeats``.
    feature_names : one name per feature (default x1, x2, ...); with several
        inputs, a list over all inputs' features in input order, or
        {input name: names} (default INPUT.x1, ...).
    mask_value : padding value of the sequence inputs: None (the
        ``mask_value`` of a Keras ``Masking`` layer reading the input, if
        any, else no mask), a number, or {input name: number}. Padded steps
        (all features equal to it) are never perturbed; masked outputs are
        left out of the metric (see :mod:`rnnimp.inputs`).
    padding : "post" or "pre": where series were padded; aligns the real
        steps of series of different lengths when a permutation exchanges them.
    batch_size, shard_size : the model runs on batches of ``batch_size``
        series; a unit of work covers ``shard_size`` series (a multiple of
        ``batch_size``). Neither changes the effects.
    jit_compile : compile the forward pass with XLA; a ``keras.Sequential``
        stack of LSTM (and Dense, Flatten, Dropout) layers then runs as
        rnnimp's fused program (:mod:`rnnimp.lstm`, equal to ``model(x)`` to
        float32 rounding). False: plain ``model(x)`` in a ``tf.function``.
    """

    n_repeats: int = _option(
        30, flag="--repeats", type=int, repeat_key=True,
        help="repeats per feature, >= 2; with --target-halfwidth, the first wave (default: %(default)s)")
    first_repeat: int = _option(
        0, flag="--first-repeat", type=int, repeat_key=True,
        help="index of the first repeat, to split repeats over several runs merged with jobs.merge "
             "(default: %(default)s)")
    perturbation: str = _option(
        "noise", flag="--perturbation", choices=PERTURBATIONS,
        help="noise: add Gaussian noise; permute: exchange a feature's trajectory between series; "
             "ablate: replace it by --ablate-value; conditional-permute: permute within strata of "
             "--condition-on (default: %(default)s)")
    noise_scale: float | None = _option(
        0.2, flag="--noise-scale", type=float, only_with=("perturbation", "noise"),
        help="standard deviation of the added noise, in the feature's units (default: %(default)s)")
    noise_relative: float | None = _option(
        None, flag="--noise-relative", type=float, only_with=("perturbation", "noise"),
        help="noise standard deviation as a fraction of each feature's standard deviation (overrides --noise-scale)")
    ablate_value: str | float = _option(
        "mean", flag="--ablate-value", recorded=False,  # recorded as the values it gives (ablate_values)
        help="mean, zero, or a number (default: %(default)s)")
    metric: str | Sequence[str] = _option(
        "rms", flag="--metric", metavar="M[,M...]", parse=parse_metrics,
        help="rms or mae change of the outputs, or loss-increase: the increase of the loss against the labels; "
             "several, comma-separated, from one set of forward passes (default: %(default)s)")
    loss: str | None = _option(
        "mse", flag="--loss", choices=LOSSES, only_with=("metric", "loss-increase"),
        help="loss of --metric loss-increase (default: %(default)s)")
    per_output: bool = _option(
        False, flag="--per-output", recorded=False,
        help="also the effect on each output value (the model's outputs flattened per series, in order)")
    output_names: Sequence[str] | None = _option(
        None, flag="--output-names", metavar="A,B,...", parse=split_names, recorded=False,
        help="with --per-output: one name per output value (e.g. the classes)")
    condition_on: Sequence[str | int] | None = _option(
        None, flag="--condition-on", metavar="F1[,F2...]", parse=split_names, recorded=False,
        only_with=("perturbation", "conditional-permute"),
        help="conditional-permute: exchange values only between series in the same stratum of these features")
    strata: int = _option(
        DEFAULT_STRATA, flag="--strata", type=int, recorded=False,
        help="conditional-permute: quantile bins per conditioning feature (default: %(default)s)")
    segments: Sequence[Any] | None = _option(None, recorded=False)  # recorded as "segment_labels"
    segment_column: str | None = _option(
        None, flag="--segment-column", jobs=("importance",), recorded=False,
        help="Parquet column constant within each series (a month, a site): importance per segment, "
             "with comparisons of consecutive segments")
    groups: Mapping[str, Sequence[str | int]] | None = _option(
        None, flag="--group", repeatable=True, metavar="NAME=F1,F2", parse=parse_groups,
        help="perturb these features jointly, reported as one row NAME (repeatable)")
    per_step: bool = _option(
        False, flag="--per-step", help="a features x time-steps map: perturb one step at a time")
    resample: bool = _option(
        False, flag="--resample",
        help="each repeat also draws a bootstrap resample of the series (intervals include sample choice)")
    random_state: int = _option(
        0, flag="--seed", type=int, recorded=False,  # recorded as the run's "seed"
        help="the one seed all randomness derives from (default: %(default)s)")
    confidence: float = _option(
        0.95, flag="--confidence", type=float, help="confidence level of the intervals (default: %(default)s)")
    interval: str = _option(
        "bca", flag="--interval", choices=stats.INTERVAL_METHODS,
        help="bootstrap method of the second interval: bca (percentile where BCa is undefined), "
             "percentile, or t only (default: %(default)s)")
    target_halfwidth: float | None = _option(
        None, flag="--target-halfwidth", type=float, repeat_key=True,
        help="adaptive repeats: add waves until every t-interval half-width is at most this")
    relative: bool = _option(
        False, flag="--halfwidth-relative", old_flags=("--relative",), repeat_key=True,
        help="--target-halfwidth is a fraction of each mean effect")
    max_repeats: int | None = _option(
        None, flag="--max-repeats", type=int, repeat_key=True,
        help="adaptive repeats: at most this many per feature (default: 10 x --repeats)")
    wave_repeats: int = _option(
        5, flag="--wave-repeats", type=int, repeat_key=True,
        help="adaptive repeats: repeats per extra wave (default: %(default)s)")
    feature_names: Sequence[str] | Mapping[str, Sequence[str]] | None = _option(
        None, flag="--feature-names", jobs=("importance",), parse=split_names,
        help="comma-separated names of all features, inputs in model order (default: Parquet columns, "
             "or x1, x2, ...)")
    mask_value: float | Mapping[str, float] | None = _option(
        None, flag="--mask-value", jobs=("importance",), repeatable=True, metavar="[NAME=]V",
        recorded=False,  # recorded per input under "inputs", where a mask applies
        parse=parse_mask_values,
        help="padding value of the sequence inputs (all, or NAME's): steps whose features all equal it are "
             "never perturbed (default: the mask_value of a Keras Masking layer reading the input, else none)")
    padding: str = _option(
        "post", flag="--padding", jobs=("importance",), choices=PADDINGS, recorded=False,  # where a mask applies
        help="where series of different lengths are padded (long-form Parquet) and how permuted series of "
             "different lengths are aligned: post (at the end) or pre (at the start) (default: %(default)s)")
    batch_size: int = _option(
        DEFAULT_BATCH_SIZE, flag="--eval-batch-size", type=int,
        help="series per forward pass on the workers (default: %(default)s)")
    shard_size: int = _option(
        DEFAULT_SHARD_SIZE, flag="--shard-size", type=int,
        help="series per unit of work, a multiple of --eval-batch-size (default: %(default)s)")
    jit_compile: bool = _option(True)
    shard_cache_mib: int = _option(
        DEFAULT_CACHE_MIB, flag="--shard-cache-mib", type=int, jobs=("importance",), recorded=False,
        help="dataset input (--data DIR or URI prefix): MiB of shards each worker keeps cached, shared by the "
             "dataset inputs (default: %(default)s)")

    def configuration(self) -> dict[str, Any]:
        """The recorded options: a resolved Options' entry in a run's configuration (JSON-ready).

        Options that do not apply (see ``Spec.only_with``) are None.
        """
        recorded = {}
        for option in dataclasses.fields(self):
            spec = spec_of(option)
            if not spec.recorded:
                continue
            value = getattr(self, option.name)
            if spec.only_with is not None and not _applies(getattr(self, spec.only_with[0]), spec.only_with[1]):
                value = None
            if isinstance(value, tuple):
                value = list(value)
            recorded[option.name] = value
        return recorded


@dataclass(frozen=True)
class Execution:
    """The options of a job that say where and how it runs, not what it computes.

    None of them changes an effect, so none enters the recorded
    configuration that ``--out`` and :mod:`rnnimp.merge` compare (runs on CPU
    and GPU workers, or on 2 and 8 workers, merge). The Python API sets the
    same things on :class:`rnnimp.distributed.RayExecutor`
    (``RayExecutor(gpus_per_worker=0.5)``).
    """

    out: str | None = _option(
        None, flag="--out", help="output folder or pyarrow.fs URI, e.g. s3://bucket/run (default: %(default)s)")
    executor: str = _option(
        "ray", flag="--executor", choices=JOB_EXECUTORS,
        help="ray: Ray workers, on the cluster in RAY_ADDRESS or an embedded local Ray; local: this process "
             "alone, on two threads per CPU of --num-cpus, without Ray (one machine, no start-up of seconds) "
             "(default: %(default)s)")
    num_cpus: int | None = _option(
        None, flag="--num-cpus", type=int,
        help="CPUs of the embedded local Ray, or those --executor local uses (default: all); ignored when "
             "RAY_ADDRESS is set")
    gpus_per_worker: float | None = _option(
        None, flag="--gpus-per-worker", type=float,
        help="GPUs each Ray worker requests: a fraction in (0, 1] shares a GPU between workers, or a whole "
             "number (default: none, CPU workers)")
    workers_only: bool = _option(
        False, flag="--workers-only",
        help="only the Ray workers evaluate; by default the driver also computes units until the workers "
             "have started and compiled (the driver lane)")
    connect_timeout: float = _option(
        30.0, flag="--connect-timeout", type=float,
        help="seconds to wait for the cluster in RAY_ADDRESS before giving up (default: %(default)s)")
    overwrite: bool = _option(
        False, flag="--overwrite", help="discard results or an unfinished run of another configuration in --out")
    quiet: bool = _option(False, flag="--quiet", help="no progress bar")
    verbose: bool = _option(
        False, flag="--verbose", on_parse=lambda: logs.set_verbose(True),
        help="also show TensorFlow's, absl's and Ray's own log lines")

    def check(self, names: Names = API_NAMES) -> "Execution":
        if self.executor not in JOB_EXECUTORS:
            raise InvalidParameterError(names("executor"), f"must be one of {', '.join(JOB_EXECUTORS)}", self.executor)
        if self.num_cpus is not None:
            validation.positive_int(names("num_cpus"), self.num_cpus)
        if self.executor == "local":
            for option, value in (("gpus_per_worker", self.gpus_per_worker), ("workers_only", self.workers_only)):
                if value not in (None, False):
                    raise InvalidParameterError(names(option), f"applies to Ray workers, not to "
                                                f"{names('executor')} local", value)
        validation.positive_finite(names("connect_timeout"), self.connect_timeout)
        if self.gpus_per_worker is not None:
            validation.gpu_share(names("gpus_per_worker"), self.gpus_per_worker)
        return self


def catalogue(job: str | None = None) -> Iterator[tuple[dataclasses.Field, Spec]]:
    """Every option with a flag (of ``job``, or of any job): Options' fields, then Execution's."""
    for option in (*dataclasses.fields(Options), *dataclasses.fields(Execution)):
        spec = spec_of(option)
        if spec.flag is not None and (job is None or job in spec.jobs):
            yield option, spec


REPEAT_KEYS = tuple(option.name for option in dataclasses.fields(Options) if spec_of(option).repeat_key)


@dataclass(frozen=True)
class Request:
    """A validated run: the options resolved against the model and the data.

    ``options``: resolved (names, groups by feature name, max_repeats, the
    effective batch and shard sizes); ``sample`` (series, time, features)
    float32 for a single-input model, else a tuple of one float32 array per
    model input (see :mod:`rnnimp.inputs`), where an input read from a
    partitioned dataset (sequence or static) is a
    :class:`~rnnimp.dataset.DatasetInput` (its plan, no rows); ``labels`` (series, outputs)
    float32 or None; ``steps[t]``: target t's steps in a time-step map, or
    [None]; ``names`` how errors name the parameters (kept for the checks
    that need the model to run).
    """

    options: Options
    sample: np.ndarray | tuple[np.ndarray, ...]
    labels: np.ndarray | None
    targets: list[Target]
    steps: list[list[int | None]]
    settings: Settings
    configuration: dict[str, Any]
    names: Names = API_NAMES

    @property
    def feature_names(self) -> list[str]:
        return list(self.options.feature_names)

    @property
    def inputs(self) -> InputLayout:
        return self.settings.inputs

    @property
    def cells(self) -> list[tuple[int, int | None]]:
        """(target, step) of every result row, targets in order."""
        return [(t, s) for t, steps in enumerate(self.steps) for s in steps]

    def target_inputs(self) -> list[str] | None:
        """Per target, the comma-separated names of the inputs its features come from (several inputs only)."""
        if self.inputs.n_inputs == 1:
            return None
        return [",".join(self.inputs.names[k] for k, _, _ in self.inputs.parts(t.features)) for t in self.targets]


def feature_index(reference: str | int, names: list[str], parameter: str) -> int:
    """The index of the feature named (or indexed) by ``reference``, else raise naming ``parameter``."""
    if isinstance(reference, (int, np.integer)) and not isinstance(reference, bool):
        if 0 <= reference < len(names):
            return int(reference)
    elif reference in names:
        return names.index(reference)
    raise InvalidParameterError(parameter, f"must name known features ({', '.join(names)}) "
                                f"or indexes 0..{len(names) - 1}", reference)


def resolve_feature_names(names: Sequence[str] | None, n_features: int, parameter: str = "feature_names") -> list[str]:
    """The feature names: ``names`` checked (n_features distinct non-empty), or x1, x2, ..."""
    if names is None:
        return [f"x{i + 1}" for i in range(n_features)]
    return validation.distinct_names(parameter, [str(name) for name in names], n_features, list(names))


def resolve_targets(names: list[str], groups: Mapping[str, Sequence[str | int]] | None,
                    parameter: str = "groups") -> list[Target]:
    """One target per feature, then one per group (features perturbed jointly)."""
    targets = [Target(name, (index,)) for index, name in enumerate(names)]
    for group_name, members in (groups or {}).items():
        if not group_name or group_name in names or not members:
            raise InvalidParameterError(parameter, "need a new non-empty name and at least one feature",
                                        f"{group_name}={list(members or [])}")
        indexes = tuple(sorted({feature_index(m, names, parameter) for m in members}))
        targets.append(Target(str(group_name), indexes))
    return targets


Statistics = Callable[[Sequence[DatasetInput], Sequence["float | None"], Sequence[Any]], list[Moments]]
"""``statistics(dataset inputs, their mask values, the layout's shards)``: per input, its exact moments."""


def input_moments(sample, mask_values: Sequence[float | None] = (), shards: Sequence[Any] = (),
                  statistics: Statistics | None = None) -> list[Moments]:
    """Per model input, the exact :class:`~rnnimp.dataset.Moments` of its values (real steps only).

    In-memory inputs are summed here; dataset inputs by ``statistics`` (default
    :func:`rnnimp.dataset.local_moments`: read here one shard at a time; the
    jobs pass :func:`rnnimp.distributed.dataset_moments`: one pass on the
    workers). Exact sums, so both give the same bits.
    """
    arrays = list(sample) if isinstance(sample, (tuple, list)) else [sample]
    masks = list(mask_values) or [None] * len(arrays)
    moments: list[Moments | None] = [None if is_dataset(a) else value_moments(a, m) for a, m in zip(arrays, masks)]
    datasets = [k for k, array in enumerate(arrays) if is_dataset(array)]
    if datasets:
        computed = (statistics or local_moments)([arrays[k] for k in datasets], [masks[k] for k in datasets],
                                                 shards)
        for k, value in zip(datasets, computed):
            moments[k] = value
    return moments  # type: ignore[return-value]


def resolve_perturbation(kind: str, sample, noise_scale: float, noise_relative: float | None,
                         ablate_value: str | float, names: Names = API_NAMES,
                         mask_values: Sequence[float | None] = (),
                         moments: Callable[[], list[Moments]] | None = None) -> Perturbation:
    """The perturbation with its per-feature scales or replacement values fixed on ``sample``.

    ``sample``: one array (series, time, features), or one array per model
    input; scales and values are per global feature (inputs in order), their
    statistics taken over real steps only where an input has a mask value.
    Means and standard deviations (ddof 0) are the correctly rounded exact
    ones (:class:`~rnnimp.dataset.Moments`), the same bits for in-memory and
    dataset input. ``moments``: computes them per input (default: from
    ``sample`` here, see :func:`input_moments`); called only when needed.
    """
    if kind not in PERTURBATIONS:
        raise InvalidParameterError(names("perturbation"), f"must be one of {', '.join(PERTURBATIONS)}", kind)
    arrays = list(sample) if isinstance(sample, (tuple, list)) else [sample]
    n_features = sum(a.shape[-1] for a in arrays)
    if moments is None:
        def moments() -> list[Moments]:
            return input_moments(arrays, mask_values)
    if kind == "noise":
        if noise_relative is not None:
            relative = validation.positive_finite(names("noise_relative"), noise_relative)
            stds = np.concatenate([m.stds() for m in moments()])
            return Perturbation("noise", scales=tuple(float(relative * s) for s in stds))
        scale = validation.positive_finite(names("noise_scale"), noise_scale)
        return Perturbation("noise", scales=(scale,) * n_features)
    if kind in ("permute", CONDITIONAL):  # conditional: a permutation within strata (Settings.measures)
        n_series = len(sample[0]) if isinstance(sample, (tuple, list)) else len(sample)
        if n_series < 2:
            raise InvalidParameterError(names("X"), "must hold at least 2 series to permute", n_series)
        return Perturbation("permute")
    if ablate_value == "mean":
        values = np.concatenate([m.means() for m in moments()])
    elif ablate_value == "zero":
        values = np.zeros(n_features)
    else:
        try:
            constant = float(ablate_value)
        except (TypeError, ValueError):
            constant = math.nan
        if not math.isfinite(constant):
            raise InvalidParameterError(names("ablate_value"), "must be 'mean', 'zero' or a finite number",
                                        ablate_value)
        values = np.full(n_features, constant)
    return Perturbation("ablate", values=tuple(float(v) for v in values))


def n_outputs(model) -> int | None:
    """The number of output values per series of ``model``, or None if its shapes are not fixed."""
    try:
        shapes = [tuple(o.shape[1:]) for o in model.outputs]
    except (AttributeError, TypeError, ValueError):
        return None
    if any(d is None for shape in shapes for d in shape):
        return None
    return int(sum(np.prod(shape, dtype=np.int64) for shape in shapes))


def _check_model_fits(model, sample: np.ndarray, parameter: str) -> None:
    expected = tuple(model.input_shape[1:])
    actual = sample.shape[1:]
    if len(expected) != 2 or any(e is not None and e != a for e, a in zip(expected, actual)):
        raise InvalidParameterError(
            parameter, f"must match the model's input shape (series, {expected[0]}, {expected[-1]})",
            f"shape {sample.shape}")


def resolve_metric(name: str, loss: str, y, model, n_series: int,
                   names: Names = API_NAMES) -> tuple[Metric, np.ndarray | None]:
    """The metric and, for loss-increase, labels as float32 (series, outputs)."""
    if name not in METRICS:
        raise InvalidParameterError(names("metric"), f"must be one of {', '.join(METRICS)}", name)
    if name != "loss-increase":
        return Metric(name), None
    if loss not in LOSSES:
        raise InvalidParameterError(names("loss"), f"must be one of {', '.join(LOSSES)}", loss)
    if y is None:
        raise InvalidParameterError(names("y"), "labels are required for the loss-increase metric", None)
    labels = np.asarray(y, dtype=np.float32)
    labels = labels.reshape(labels.shape[0], -1) if labels.ndim else labels
    outputs = n_outputs(model)
    if labels.ndim != 2 or labels.shape[0] != n_series or (outputs is not None and labels.shape[1] != outputs):
        raise InvalidParameterError(
            names("y"), f"must hold one label per model output for each of the {n_series} series "
            f"({outputs} outputs)", f"shape {np.shape(y)}")
    if not np.isfinite(labels).all():
        raise InvalidParameterError(names("y"), "must hold only finite values", "NaN or infinite labels")
    return Metric(name, loss), labels


def options_from_keywords(options: Mapping[str, Any]) -> Options:
    """``Options(**options)``, refusing unknown keywords with one InvalidParameterError."""
    try:
        return Options(**options)
    except TypeError as error:
        raise InvalidParameterError("options", "must be fields of rnnimp.api.Options", str(error)) from None


def open_datasets(X: Any, cache_mib: int, names: Names = API_NAMES, model=None) -> Any:
    """``X`` with every dataset source (a directory or URI prefix string, a pyarrow dataset, a
    :class:`~rnnimp.dataset.DatasetPlan`) replaced by its :class:`~rnnimp.dataset.DatasetInput`.

    Only metadata is read. A source for a static input of ``model`` (one
    taking (batch, features)) is planned as a static dataset, one row per
    series. The worker's cache budget ``cache_mib`` is shared by the dataset
    inputs (:func:`rnnimp.dataset.split_budget`).
    """
    static = _static_inputs(model)
    if isinstance(X, Mapping):
        keyed = {key: value for key, value in X.items()}
        where = {key: f"{names('X')}[{key!r}]" for key in keyed}
        is_static = {key: static.get(str(key), False) for key in keyed}
    elif isinstance(X, (list, tuple)):
        keyed = dict(enumerate(X))
        where = {key: names("X") for key in keyed}
        kinds = list(static.values())
        is_static = {key: key < len(kinds) and kinds[key] for key in keyed}
    else:
        if not is_dataset_source(X):
            return X
        keyed, where, is_static = {0: X}, {0: names("X")}, {0: False}
    plans = {key: open_plan(value, parameter=where[key], static=is_static[key])
             for key, value in keyed.items() if is_dataset_source(value)}
    budgets = dict(zip(plans, split_budget(list(plans.values()), cache_mib << 20)))
    opened = {key: open_input(plans[key], budgets[key]) if key in plans else value for key, value in keyed.items()}
    if isinstance(X, Mapping):
        return opened
    if isinstance(X, (list, tuple)):
        return [opened[key] for key in range(len(X))]
    return opened[0]


def _static_inputs(model) -> dict[str, bool]:
    """{input name: whether it is a static input}, in ``model.inputs`` order ({} without a model)."""
    if model is None:
        return {}
    from .inputs import model_input_shapes

    return {name: len(shape) == 1 for name, shape in zip(model_input_names(model), model_input_shapes(model))}


def _check_dataset_series(names: Sequence[str], arrays: Sequence[Any], parameter: str) -> None:
    """Refuse dataset inputs whose series differ in count or id range (series are matched by position in
    id order), naming both inputs."""
    datasets = [(name, array.plan) for name, array in zip(names, arrays) if is_dataset(array)]
    for (first_name, first), (name, plan) in zip(datasets, datasets[1:]):
        ends, other = (first.files[0].min_id, first.files[-1].max_id), (plan.files[0].min_id, plan.files[-1].max_id)
        if ends != other or first.n_series != plan.n_series:
            raise InvalidParameterError(
                f"{parameter} {name}", f"must hold the series of input {first_name!r} ({first.n_series} series, "
                f"ids {ends[0]!r}..{ends[1]!r})", f"{plan.n_series} series, ids {other[0]!r}..{other[1]!r}")


def check_options(options: Options, names: Names = API_NAMES) -> tuple[int, float, int | None]:
    """Check the options that need neither the model nor the data: (n_repeats, confidence, max_repeats).

    The first part of :func:`prepare`; the jobs call it before they start
    Ray, so that most bad input is refused before anything starts.
    """
    o, n = options, names
    validation.positive_int(n("shard_cache_mib"), o.shard_cache_mib)
    n_repeats = validation.positive_int(n("n_repeats"), o.n_repeats)
    if n_repeats < 2:
        raise InvalidParameterError(n("n_repeats"), "must be at least 2 for a confidence interval", n_repeats)
    validation.seed(n("random_state"), o.random_state)
    validation.seed(n("first_repeat"), o.first_repeat)
    confidence = validation.open_unit_interval(n("confidence"), o.confidence)
    if o.interval not in stats.INTERVAL_METHODS:
        raise InvalidParameterError(n("interval"), f"must be one of {', '.join(stats.INTERVAL_METHODS)}",
                                    o.interval)
    validation.positive_int(n("batch_size"), o.batch_size)
    validation.positive_int(n("shard_size"), o.shard_size)
    validation.positive_int(n("wave_repeats"), o.wave_repeats)
    max_repeats = None
    if o.target_halfwidth is not None:
        validation.positive_finite(n("target_halfwidth"), o.target_halfwidth)
        max_repeats = validation.positive_int(n("max_repeats"), o.max_repeats or 10 * n_repeats)
        if max_repeats < n_repeats:
            raise InvalidParameterError(n("max_repeats"), f"must be at least {n('n_repeats')} ({n_repeats})",
                                        max_repeats)
    if o.padding not in PADDINGS:
        raise InvalidParameterError(n("padding"), f"must be one of {', '.join(PADDINGS)}", o.padding)
    return n_repeats, confidence, max_repeats


def prepare(model, X, y=None, options: Options = Options(), names: Names = API_NAMES,
            statistics: Statistics | None = None) -> Request:
    """Validate ``options`` against ``model`` and data ``X`` (and labels ``y``); no model runs.

    Raises InvalidParameterError naming the option, the rule and the value;
    ``names`` says how to name parameters (the jobs pass their options'
    flags, and which of their inputs hold ``X`` and ``y``). ``X`` (or an
    input's entry) may name a partitioned Parquet dataset (see
    :mod:`rnnimp.dataset`): only its metadata is read here, and the
    per-feature statistics a perturbation needs come from ``statistics``
    (default: read here shard by shard; the jobs compute them on the workers).
    """
    o, n = options, names
    n_repeats, confidence, max_repeats = check_options(o, n)
    X = open_datasets(X, o.shard_cache_mib, n, model)
    if len(model.inputs) == 1 and len(model.inputs[0].shape) == 3 and not isinstance(X, (dict, list, tuple)):
        sample = X if is_dataset(X) else validation.series_array(n("X"), X)
        _check_model_fits(model, sample, n("X"))
        input_names, arrays = model_input_names(model), [sample]
        feature_names = resolve_feature_names(o.feature_names, sample.shape[2], n("feature_names"))
    else:
        input_names, arrays = input_arrays(model, X, n("X"))
        sample = arrays[0] if len(arrays) == 1 else tuple(arrays)
        feature_names = input_feature_names(input_names, arrays, o.feature_names, n("feature_names"))
    _check_dataset_series(input_names, arrays, n("X"))
    mask_values = resolve_mask_values(o.mask_value, model, input_names, arrays, n("mask_value"))
    inputs = layout_of(input_names, arrays, mask_values, o.padding)
    n_samples, time_steps, n_features = len(arrays[0]), inputs.max_time_steps, inputs.n_features
    targets = resolve_targets(feature_names, o.groups, n("groups"))
    metrics_asked = metric_names(o.metric)
    if not metrics_asked or len(set(metrics_asked)) != len(metrics_asked):
        raise InvalidParameterError(n("metric"), f"must be one or more distinct metrics of {', '.join(METRICS)}",
                                    ",".join(metrics_asked))
    resolved_metrics = [resolve_metric(name, o.loss, y, model, n_samples, n) for name in metrics_asked]
    measure = resolved_metrics[0][0]
    labels = next((found for _, found in resolved_metrics if found is not None), None)
    output_names = _resolve_output_names(o, model, n)
    segment_ids, segment_labels = resolve_segments(o.segments, n_samples, n("segments"))
    donor_strata = None
    if o.perturbation == CONDITIONAL:
        if any(is_dataset(array) for array in arrays):  # its strata come from every series' values
            raise InvalidParameterError(n("perturbation"), "must not be conditional-permute for a dataset input "
                                        "(its strata need every series' values in memory): give the sample as "
                                        "an array or a .npy/.parquet file", CONDITIONAL)
        donor_strata = conditional_strata(inputs, arrays, targets, o.condition_on, o.strata, feature_names,
                                          segment_ids, n)
    elif o.condition_on is not None:
        raise InvalidParameterError(n("condition_on"), f"needs {n('perturbation')} {CONDITIONAL}", o.condition_on)
    elif segment_ids is not None and o.perturbation == "permute":
        donor_strata = _checked_strata(segment_ids, None, n("segments"), "segment")
        donor_strata = [donor_strata] * len(targets)
    measures = None
    if len(metrics_asked) > 1 or o.per_output or segment_ids is not None or donor_strata is not None:
        measures = Measures(tuple(m for m, _ in resolved_metrics), bool(o.per_output), segment_ids,
                            len(segment_labels) if segment_labels else 1,
                            None if donor_strata is None else tuple(donor_strata))
    layout = Layout.for_sample(n_samples, o.batch_size, o.shard_size, n)
    perturb = resolve_perturbation(o.perturbation, arrays, o.noise_scale, o.noise_relative, o.ablate_value, n,
                                   mask_values, lambda: input_moments(arrays, mask_values, layout.shards, statistics))
    steps = [_target_steps(inputs, target, o.per_step, n("groups")) for target in targets]
    resolved = dataclasses.replace(
        o, n_repeats=n_repeats, confidence=confidence, max_repeats=max_repeats, feature_names=feature_names,
        groups={t.name: [feature_names[i] for i in t.features] for t in targets[n_features:]},
        batch_size=layout.batch_size, shard_size=layout.shard_size, mask_value=o.mask_value,
        output_names=output_names, segments=None,
        condition_on=None if o.condition_on is None else [feature_names[feature_index(f, feature_names,
                                                                              n("condition_on"))]
                                                          for f in o.condition_on])
    configuration = {
        **resolved.configuration(), "scales": list(perturb.scales), "ablate_values": list(perturb.values),
        "n_samples": n_samples, "time_steps": time_steps, "n_features": n_features,
    }
    # recorded only where asked for, so the configuration of other runs (and their checkpoints) is unchanged
    if resolved.per_output:
        configuration.update(per_output=True, output_names=output_names)
    if o.perturbation == CONDITIONAL:
        configuration.update(condition_on=list(resolved.condition_on), strata=o.strata)
    if segment_labels:
        configuration.update(segment_column=o.segment_column, segment_labels=segment_labels)
    # recorded only where they matter, so a single-input run without a mask keeps its configuration
    if inputs.n_inputs > 1 or any(v is not None for v in mask_values):
        configuration["inputs"] = {name: {"kind": inputs.kind(k), "shape": list(inputs.shapes[k]),
                                          "mask_value": inputs.mask_values[k]}
                                   for k, name in enumerate(inputs.names)}
        configuration["padding"] = o.padding
    return Request(resolved, sample, labels, targets, steps,
                   Settings(layout, perturb, measure, o.jit_compile, inputs, measures), configuration, n)


def _target_steps(inputs: InputLayout, target: Target, per_step: bool, parameter: str) -> list[int | None]:
    """The steps of a target in a time-step map: those of its longest sequence input, or [None]."""
    if not per_step:
        return [None]
    parts = inputs.parts(target.features)
    sequence = [k for k, _, _ in parts if inputs.is_sequence(k)]
    if not sequence:
        return [None]
    if len(sequence) < len(parts):
        raise InvalidParameterError(parameter, "must not mix static and sequence features in a time-step map "
                                    "(per_step)", target.name)
    return list(range(max(inputs.shapes[k][0] for k in sequence)))


def _resolve_output_names(o: Options, model, n: Names) -> list[str] | None:
    """``output_names`` checked: only with per_output, distinct, one per output value if the model says how many."""
    if o.output_names is None:
        return None
    if not o.per_output:
        raise InvalidParameterError(n("output_names"), f"needs {n('per_output')}", list(o.output_names))
    outputs = n_outputs(model)
    names = [str(name) for name in o.output_names]
    if any(not name for name in names) or validation.repeated(names):
        raise InvalidParameterError(n("output_names"), "must be distinct non-empty names", list(o.output_names))
    if outputs is not None and len(names) != outputs:
        raise InvalidParameterError(n("output_names"), f"must give {outputs} names, one per output value of the "
                                    "model", list(o.output_names))
    return names


def resolve_segments(segments: Sequence[Any] | None, n_series: int,
                     parameter: str = "segments") -> tuple[np.ndarray | None, list[str]]:
    """Segment ids int64 (series,) numbered in sorted order of the labels, and the labels (as strings).

    ``segments``: one label per series (a month, a site...), or None (no segments).
    """
    if segments is None:
        return None, []
    values = np.asarray(segments)
    if values.ndim != 1 or len(values) != n_series:
        raise InvalidParameterError(parameter, f"must hold one label per series ({n_series})",
                                    f"shape {values.shape}")
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise InvalidParameterError(parameter, "must not hold NaN or infinite labels", "NaN or infinite")
    labels, ids = np.unique(values, return_inverse=True)
    return ids.reshape(-1).astype(np.int64), [str(label) for label in labels.tolist()]


def _checked_strata(segment_ids: np.ndarray, strata_ids: np.ndarray | None, parameter: str, what: str) -> np.ndarray:
    """Strata combined with segments (permutation stays within both); refuse one of a single series."""
    if strata_ids is None:
        combined = segment_ids
    else:
        _, combined = np.unique(np.column_stack([segment_ids, strata_ids]), axis=0, return_inverse=True)
        combined = combined.reshape(-1)
    counts = np.bincount(combined)
    if (counts < 2).any():
        raise InvalidParameterError(
            parameter, f"every {what} must hold at least 2 series to permute within it "
            f"({int((counts < 2).sum())} hold 1)", int((counts < 2).sum()))
    return combined.astype(np.int64)


def _series_means(inputs: InputLayout, arrays: Sequence[np.ndarray], features: Sequence[int]) -> np.ndarray:
    """Each feature's mean over the real time steps of each series (static: its value): float64 (series, features)."""
    columns = []
    for feature in features:
        k, column = inputs.locate(feature)
        array = arrays[k]
        if not inputs.is_sequence(k):
            columns.append(array[:, column].astype(np.float64))
            continue
        mask_value = inputs.mask_values[k]
        if mask_value is None:
            columns.append(conditional.per_series_means(array, [column])[:, 0])
            continue
        real = np.any(array != np.float32(mask_value), axis=2)
        values = np.where(real, array[:, :, column], 0.0).sum(axis=1, dtype=np.float64)
        columns.append(values / np.maximum(real.sum(axis=1), 1))
    return np.column_stack(columns)


def conditional_strata(inputs: InputLayout, arrays: Sequence[np.ndarray], targets: Sequence[Target],
                       condition_on: Sequence[str | int] | None, n_bins: int, names: list[str],
                       segment_ids: np.ndarray | None, n: Names = API_NAMES) -> list[np.ndarray]:
    """Per target, the strata its conditional permutation stays within: int64 (series,) each.

    Strata are the quantile bins of the conditioning features' per-series
    means (:func:`rnnimp.conditional.strata`), computed once here from the
    whole sample. A target is never conditioned on its own features: a
    conditioning feature's row (or a group holding one) is conditioned on the
    *other* conditioning features, and on none (a marginal permutation) when
    no other remains. With segments, strata are also split by segment.
    """
    if not condition_on:
        raise InvalidParameterError(n("condition_on"), f"must name at least one feature for {n('perturbation')} "
                                    f"{CONDITIONAL}", condition_on)
    validation.positive_int(n("strata"), n_bins)
    conditions = sorted({feature_index(f, names, n("condition_on")) for f in condition_on})
    means = _series_means(inputs, arrays, conditions)
    n_series = len(arrays[0])
    by_conditions: dict[tuple[int, ...], np.ndarray] = {}
    per_target = []
    for target in targets:
        kept = tuple(c for c in conditions if c not in target.features)
        if kept not in by_conditions:
            if kept:
                columns = [conditions.index(c) for c in kept]
                try:
                    ids = conditional.strata(means[:, columns], n_bins, condition_names=[names[c] for c in kept])
                except InvalidParameterError as error:
                    raise InvalidParameterError(n("strata"), error.rule.replace("(--strata)", f"({n('strata')})")
                                                .replace("(--condition-on)", f"({n('condition_on')})"),
                                                n_bins) from None
            else:
                ids = np.zeros(n_series, dtype=np.int64)
            if segment_ids is not None:
                ids = _checked_strata(segment_ids, ids, n("strata"), "stratum within a segment")
            by_conditions[kept] = ids
        per_target.append(by_conditions[kept])
    return per_target
