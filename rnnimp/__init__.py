"""rnnimp: variable importance for recurrent neural networks, on Ray.

The public API is :func:`sensitivity_importance`; the distributed executor
lives in :mod:`rnnimp.distributed` (the only module that imports Ray).

The API is imported on first use (PEP 562): a Ray worker, which imports
:mod:`rnnimp.distributed` and the modules its units need, then never loads
the option catalogue, the statistics, Parquet output and pyarrow's dataset
module (with pandas) that only the driver uses, about a CPU-second each.
"""

from __future__ import annotations

from .errors import InvalidParameterError, RnnimpError

__version__ = "0.1.0"

__all__ = ["ImportanceResult", "InvalidParameterError", "RnnimpError", "sensitivity_importance", "__version__"]


def __getattr__(name: str):
    if name in ("ImportanceResult", "sensitivity_importance"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'rnnimp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
