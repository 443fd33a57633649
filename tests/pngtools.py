"""Checks shared by the chart tests: a figure's PNG is valid and decodes."""

import io

import matplotlib.image
import numpy as np

from rnnimp.plots import png_bytes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_png(figure) -> np.ndarray:
    """The figure's PNG decoded: (height, width, channels); checks the PNG signature and a sensible size."""
    data = png_bytes(figure)
    assert data[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    return image
