"""Gaussian lesion heatmaps from 3D bounding boxes: the DBT regression target of §4.1, Eq. 5.

Each annotated box ``(x0, y0, z0, x1, y1, z1)`` (inclusive voxel indices in the array's own axes,
Z the thick-slice axis) becomes one anisotropic Gaussian: mean ``mu_i`` = the box centre (a half
voxel for even extents), diagonal covariance ``Sigma_i`` with ``sigma_d = sigma_scale * extent_d``
(``extent_d = x1 - x0 + 1`` voxels; with 0.25 the box faces sit at about +-2 sigma), at least
0.5 voxel. The Gaussians are summed over boxes, as in Eq. 5. (Eq. 5 prints ``Sigma_i`` in the
exponent; the Gaussian it names, and the one built here, uses ``Sigma_i^-1``.)

``normalize="density"`` is Eq. 5 exactly (each term divided by ``sqrt(det(2 pi Sigma_i))``, so it
integrates to ~1). ``normalize="peak"`` (default, the training target) gives each Gaussian the
value 1 at its centre instead: Eq. 5's densities peak at ``(2 pi)^-1.5 / (sx sy sz)``, ~1e-4 for
typical lesion boxes (e.g. 40x40x8 voxels), far too small a target for the L2 / focal L2 loss of
§3.4, whose ``D_max`` assumes errors of order 1. Overlapping lesions still sum, so peaks may exceed 1.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["box_sigmas", "gaussian_heatmap"]

MIN_SIGMA = 0.5  # voxels: a 1-voxel-thick box still gives a Gaussian that a network can regress
WINDOW = 4.0  # each Gaussian is evaluated within +-4 sigma of its centre (exp(-8) ~ 3e-4 beyond)


def _check_scale(sigma_scale) -> float:
    if isinstance(sigma_scale, bool) or not isinstance(sigma_scale, Real) \
            or not math.isfinite(float(sigma_scale)) or float(sigma_scale) <= 0:
        raise ConfigError(f"sigma_scale must be a finite number > 0, got {sigma_scale!r}")
    return float(sigma_scale)


def _check_box(box) -> tuple[float, ...]:
    """A box as six finite floats ``(x0, y0, z0, x1, y1, z1)`` with ``x1 >= x0`` etc."""
    try:
        values = np.asarray(box, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"a box must be 6 numbers (x0, y0, z0, x1, y1, z1), got {box!r}") from exc
    if values.shape != (6,):
        raise DataError(f"a box must be 6 numbers (x0, y0, z0, x1, y1, z1), got {box!r}")
    if not np.isfinite(values).all():
        raise DataError(f"box {box!r} has a non-finite coordinate")
    lo, hi = values[:3], values[3:]
    if (hi < lo).any():
        axis = "xyz"[int(np.argmax(hi < lo))]
        raise DataError(f"box {tuple(values.tolist())} has {axis}1 < {axis}0; boxes are "
                        "(x0, y0, z0, x1, y1, z1) with inclusive corners")
    return tuple(values.tolist())


def box_sigmas(box, sigma_scale: float = 0.25) -> tuple[float, float, float]:
    """Per-axis standard deviations ``max(0.5, sigma_scale * extent)`` of a box's Gaussian (Eq. 5's
    ``Sigma_i`` "determined by the height, width and depth of the 3D bounding box", §4.1)."""
    scale = _check_scale(sigma_scale)
    b = _check_box(box)
    return tuple(max(MIN_SIGMA, scale * (b[d + 3] - b[d] + 1.0)) for d in range(3))


def _check_shape(shape) -> tuple[int, int, int]:
    if isinstance(shape, (str, bytes)):
        raise DataError(f"shape must be 3 positive ints (X, Y, Z), got {shape!r}")
    try:
        dims = tuple(shape)
    except TypeError as exc:
        raise DataError(f"shape must be 3 positive ints (X, Y, Z), got {shape!r}") from exc
    if len(dims) != 3 or any(isinstance(s, bool) or not isinstance(s, Integral) or s < 1 for s in dims):
        raise DataError(f"shape must be 3 positive ints (X, Y, Z), got {shape!r}")
    return tuple(int(s) for s in dims)


def gaussian_heatmap(shape: tuple[int, int, int], boxes, sigma_scale: float = 0.25,
                     normalize: str = "peak") -> np.ndarray:
    """A float32 heatmap of ``shape`` with one Gaussian per box summed (Eq. 5, see module doc).

    Separable: each Gaussian is the outer product of three 1D Gaussians, evaluated only within
    +-4 sigma of its centre clipped to the array, so a 512x512x64 map with a few boxes takes
    milliseconds. Boxes partly (or wholly) outside the array are clipped; no boxes give zeros.
    """
    dims = _check_shape(shape)
    scale = _check_scale(sigma_scale)
    if normalize not in ("peak", "density"):
        raise ConfigError(f"normalize must be 'peak' or 'density', got {normalize!r}")
    if isinstance(boxes, np.ndarray) and boxes.ndim == 2 and boxes.shape[0] == 0:
        boxes = []
    if isinstance(boxes, (str, bytes)) or not hasattr(boxes, "__iter__"):
        raise DataError(f"boxes must be a sequence of (x0, y0, z0, x1, y1, z1), got {boxes!r}")
    checked = [_check_box(b) for b in boxes]

    heatmap = np.zeros(dims, dtype=np.float32)
    for box in checked:
        sigmas = box_sigmas(box, scale)
        profiles, window = [], []
        for d in range(3):
            centre, sigma = (box[d] + box[d + 3]) / 2.0, sigmas[d]
            lo = max(0, math.floor(centre - WINDOW * sigma))
            hi = min(dims[d] - 1, math.ceil(centre + WINDOW * sigma))
            if lo > hi:  # this Gaussian lies entirely outside the array along this axis
                break
            idx = np.arange(lo, hi + 1, dtype=np.float64)
            profiles.append(np.exp(-0.5 * ((idx - centre) / sigma) ** 2))
            window.append(slice(lo, hi + 1))
        else:
            amplitude = 1.0
            if normalize == "density":
                amplitude = 1.0 / ((2.0 * math.pi) ** 1.5 * sigmas[0] * sigmas[1] * sigmas[2])
            gx = (profiles[0] * amplitude).astype(np.float32)
            gy, gz = profiles[1].astype(np.float32), profiles[2].astype(np.float32)
            heatmap[tuple(window)] += gx[:, None, None] * (gy[:, None] * gz[None, :])[None]
    return heatmap
