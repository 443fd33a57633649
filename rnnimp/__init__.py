"""rnnimp: variable importance for recurrent neural networks, on Ray.

The public API is :func:`sensitivity_importance`; the distributed executor
lives in :mod:`rnnimp.distributed` (the only module that imports Ray).
"""

from .api import ImportanceResult, sensitivity_importance
from .errors import InvalidParameterError, RnnimpError

__version__ = "0.1.0"

__all__ = ["ImportanceResult", "InvalidParameterError", "RnnimpError", "sensitivity_importance", "__version__"]
