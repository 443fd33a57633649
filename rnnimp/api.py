"""The public entry point: ``sensitivity_importance(model, X, ...)``."""

from __future__ import annotations

import importlib.metadata
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from . import output, validation
from .errors import InvalidParameterError
from .method import Layout, plan_units, rms_effect
from .modelio import ModelSpec
from .seeding import Stream, generator
from .stats import Summary, summarize
from .worker import EvaluationJob, LocalExecutor

DEFAULT_BATCH_SIZE = 4096
DEFAULT_SHARD_SIZE = 65536


def library_versions() -> dict[str, str]:
    """Installed versions of rnnimp and the libraries its numbers depend on."""
    versions = {}
    for name in ("rnnimp", "ray", "tensorflow", "tensorflow-cpu", "keras", "numpy", "scipy", "pyarrow"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


@dataclass
class ImportanceResult:
    """Raw effects (features × repeats) beside their per-feature summary.

    ``effects[f, r]`` is the RMS change of the predictions when feature f is
    perturbed with repeat r's noise.
    """

    feature_names: list[str]
    effects: np.ndarray
    summary: Summary
    confidence: float
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def importances_mean(self) -> np.ndarray:
        return self.summary.mean

    @property
    def importances_std(self) -> np.ndarray:
        return self.summary.std

    def effects_table(self) -> pa.Table:
        return output.with_metadata(output.effects_table(self.feature_names, self.effects), self.metadata)

    def summary_table(self) -> pa.Table:
        s = self.summary
        table = pa.table({
            "feature_index": pa.array(np.arange(len(self.feature_names)), pa.int32()),
            "feature": pa.array(self.feature_names, pa.string()),
            "n_repeats": pa.array(s.n_repeats, pa.int64()),
            "mean": s.mean, "std": s.std,
            "t_low": s.t_low, "t_high": s.t_high,
            "bootstrap_low": s.bootstrap_low, "bootstrap_high": s.bootstrap_high,
            "rank": pa.array(s.rank, pa.int64()),
        })
        return output.with_metadata(table, self.metadata)

    def write(self, out: str, model_bytes: bytes | None = None) -> dict[str, str]:
        """Write effects, summary (and the model, if given) into ``out``, each atomically."""
        paths = {}
        if model_bytes is not None:
            paths["model"] = output.write_bytes(model_bytes, out, output.MODEL_FILE)
        paths["effects"] = output.write_table(self.effects_table(), out, output.EFFECTS_FILE)
        paths["summary"] = output.write_table(self.summary_table(), out, output.SUMMARY_FILE)
        return paths

    def format_summary(self) -> str:
        """The summary as a plain-text table, most important feature first."""
        s = self.summary
        level = f"{self.confidence:.0%}"
        header = f"{'rank':>4}  {'feature':<12} {'mean':>9} {'std':>9}  {level + ' t-interval':>21}  {level + ' bootstrap':>21}"
        lines = [header, "-" * len(header)]
        for i in np.argsort(s.rank, kind="stable"):
            lines.append(
                f"{s.rank[i]:>4}  {self.feature_names[i]:<12} {s.mean[i]:>9.4f} {s.std[i]:>9.4f}"
                f"  [{s.t_low[i]:>8.4f}, {s.t_high[i]:>8.4f}]  [{s.bootstrap_low[i]:>8.4f}, {s.bootstrap_high[i]:>8.4f}]"
            )
        return "\n".join(lines)


def _feature_names(names: Sequence[str] | None, n_features: int) -> list[str]:
    if names is None:
        return [f"x{i + 1}" for i in range(n_features)]
    names = [str(name) for name in names]
    if len(names) != n_features or len(set(names)) != n_features:
        raise InvalidParameterError(
            "feature_names", f"must be {n_features} distinct names, one per feature", names
        )
    return names


def _check_model_fits(model, sample: np.ndarray) -> None:
    expected = tuple(model.input_shape[1:])
    actual = sample.shape[1:]
    if len(expected) != 2 or any(e is not None and e != a for e, a in zip(expected, actual)):
        raise InvalidParameterError(
            "X", f"must match the model's input shape (series, {expected[0]}, {expected[-1]})",
            f"shape {sample.shape}",
        )


def _resolve_executor(executor):
    if executor is None or executor == "local":
        return LocalExecutor()
    if executor == "ray":
        from .distributed import RayExecutor

        return RayExecutor()
    if hasattr(executor, "evaluate"):
        return executor
    raise InvalidParameterError("executor", "must be 'local', 'ray' or an executor object", executor)


def sensitivity_importance(
    model,
    X: np.ndarray,
    *,
    n_repeats: int = 30,
    noise_scale: float = 0.2,
    random_state: int = 0,
    confidence: float = 0.95,
    feature_names: Sequence[str] | None = None,
    executor: Any = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    shard_size: int = DEFAULT_SHARD_SIZE,
    jit_compile: bool = True,
    progress: bool = False,
    metadata: dict[str, Any] | None = None,
) -> ImportanceResult:
    """Importance of each input feature of ``model`` by Gaussian-noise sensitivity.

    For every feature f and repeat r, adds ``noise_scale * N(0, 1)`` to feature
    f at every time step of every series of ``X`` (series, time, features),
    runs the model and takes the root-mean-square change of all its outputs.

    Parameters
    ----------
    model : a Keras model taking (batch, time, features).
    X : evaluation sample, array-like (series, time, features).
    n_repeats : repeats per feature (>= 2, for the intervals).
    noise_scale : standard deviation of the added noise (> 0).
    random_state : the one seed every draw derives from.
    confidence : level of the t and bootstrap intervals, in (0, 1).
    feature_names : one name per feature (default x1, x2, ...).
    executor : ``"local"`` (in-process, the default), ``"ray"`` (a pool of
        Ray actors on the connected cluster) or an executor object such as
        :class:`rnnimp.distributed.RayExecutor`. All give identical effects.
    batch_size, shard_size : the model runs on batches of ``batch_size``
        series; a unit of work covers ``shard_size`` series (a multiple of
        ``batch_size``). Neither changes the effects beyond rounding.
    jit_compile : compile the forward pass with XLA.
    progress : show a progress bar over units of work.
    metadata : extra provenance stored with the result (e.g. timings).

    Returns
    -------
    ImportanceResult with ``effects`` of shape (features, repeats).
    """
    n_repeats = validation.positive_int("n_repeats", n_repeats)
    if n_repeats < 2:
        raise InvalidParameterError("n_repeats", "must be at least 2 for a confidence interval", n_repeats)
    noise_scale = validation.positive_finite("noise_scale", noise_scale)
    random_state = validation.seed("random_state", random_state)
    confidence = validation.open_unit_interval("confidence", confidence)
    batch_size = validation.positive_int("batch_size", batch_size)
    shard_size = validation.positive_int("shard_size", shard_size)
    sample = validation.series_array("X", X)
    _check_model_fits(model, sample)
    n_samples, time_steps, n_features = sample.shape
    names = _feature_names(feature_names, n_features)
    layout = Layout.for_sample(n_samples, batch_size, shard_size)
    runner = _resolve_executor(executor)

    started = time.perf_counter()
    spec = ModelSpec.from_model(model)
    targets = [(feature,) for feature in range(n_features)]
    units = plan_units(random_state, targets, n_repeats, layout.shards)
    job = EvaluationJob(spec, sample, layout, noise_scale, jit_compile)
    sums: dict[tuple[int, int], list[np.ndarray]] = defaultdict(list)
    for unit, batch_sums in _with_progress(runner.evaluate(job, units), len(units), progress):
        sums[unit.target, unit.repeat].append(batch_sums)
    evaluate_s = time.perf_counter() - started

    n_outputs = int(np.prod(model.output_shape[1:]))
    effects = np.array(
        [[rms_effect(sums[target, repeat], n_samples * n_outputs) for repeat in range(n_repeats)]
         for target in range(len(targets))]
    )
    summary = summarize(effects, confidence, generator(random_state, Stream.BOOTSTRAP))
    run_metadata = {
        "configuration": {
            "method": "gaussian-noise sensitivity, RMS output change",
            "n_repeats": n_repeats, "noise_scale": noise_scale, "confidence": confidence,
            "n_samples": n_samples, "time_steps": time_steps, "n_features": n_features,
            "feature_names": names, "batch_size": layout.batch_size, "shard_size": layout.shard_size,
            "jit_compile": jit_compile,
        },
        "seed": random_state,
        "model_fingerprint": spec.fingerprint,
        "executor": runner.name,
        "n_units": len(units),
        "versions": library_versions(),
        "timings_s": {"evaluate": evaluate_s, **getattr(runner, "timings", {})},
    }
    for key, value in (metadata or {}).items():
        if isinstance(value, dict) and isinstance(run_metadata.get(key), dict):
            run_metadata[key] = {**run_metadata[key], **value}
        else:
            run_metadata[key] = value
    return ImportanceResult(names, effects, summary, confidence, run_metadata)


def _with_progress(results, total: int, enabled: bool):
    if not enabled:
        yield from results
        return
    from tqdm import tqdm

    with tqdm(total=total, desc="units", unit="unit", mininterval=1.0) as bar:
        for item in results:
            yield item
            bar.update()
