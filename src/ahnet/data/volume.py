"""Read NIfTI volumes in the network's orientation: ``(X, Y, Z)`` with Z the thick-slice axis.

AH-Net's kernels are anisotropic (3x3x1 in-plane, 1x1x3 across slices), so the network must see the
coarse between-slice axis last whatever order the file stores it in. The reorientation here is a
pure axis permutation - no flips, no resampling - so that it is exactly invertible
(:func:`to_file_orientation`) and a prediction can be written back onto the file's own grid and
affine.

Every problem with a file is raised as :class:`ahnet.errors.DataError` naming the file and the rule
broken; nibabel's own exceptions (many of them lazy, raised only when the data are read) never
escape.
"""

from __future__ import annotations

import gzip
import math
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from ..errors import DataError, ResourceError

#: Relative margin by which the coarsest spacing must exceed the others to count as thicker.
ISOTROPY_RTOL = 1e-3


@dataclass
class Volume:
    """A volume in network orientation, with what is needed to map results back to the file."""

    array: np.ndarray  # (X, Y, Z) in network orientation: thick axis last
    spacing: tuple[float, float, float]  # mm, network orientation
    affine: np.ndarray  # the file's 4x4 affine, unchanged
    axes: tuple[int, int, int]  # axes[i] = the file array axis that became network axis i
    file_shape: tuple[int, int, int]
    path: str

    @property
    def thick_file_axis(self) -> int:
        """The file array axis that became the network's Z axis."""
        return self.axes[2]


def thick_axis(spacing: Sequence[float]) -> int:
    """Index of the thick (coarsest) axis of a 3-axis ``spacing``.

    A volume whose axes are all within ``1e-3`` (relative) of the coarsest is isotropic: it keeps
    its last axis as Z (returns 2) so that isotropic files are never permuted. When several axes
    tie for coarsest, the last of them is chosen, again to permute as little as possible.
    """
    sp = _check_spacing(spacing, "spacing")
    coarsest = max(sp)
    tied = [i for i, s in enumerate(sp) if s >= coarsest * (1.0 - ISOTROPY_RTOL)]
    if len(tied) == 3:
        return 2
    return tied[-1]


def network_axes(spacing: Sequence[float]) -> tuple[int, int, int]:
    """The permutation that puts the thick axis last and keeps the other two in file order."""
    t = thick_axis(spacing)
    a, b = (i for i in range(3) if i != t)
    return (a, b, t)


@dataclass
class Header:
    """What a NIfTI header says, checked, without the voxel data: see :func:`read_header`."""

    path: str
    file_shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # file axis order
    affine: np.ndarray
    axes: tuple[int, int, int]  # as Volume.axes
    dtype: np.dtype

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape in network orientation (thick axis last)."""
        return tuple(self.file_shape[a] for a in self.axes)

    @property
    def network_spacing(self) -> tuple[float, float, float]:
        return tuple(self.spacing[a] for a in self.axes)


def read_header(path) -> Header:
    """Check a NIfTI file's header - a readable NIfTI, 3D, positive finite voxel size - without
    reading its voxels (cheap even for huge files); raises :class:`DataError` like :func:`load_volume`."""
    img, header, _ = _open(path)
    return header


def _open(path):
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise DataError(f"{name}: file not found")
    if not p.is_file():
        raise DataError(f"{name}: not a regular file")
    if p.stat().st_size == 0:
        raise DataError(f"{name}: empty file (0 bytes)")

    try:
        img = nib.load(str(p), mmap=False)  # plain arrays, no open file behind them
    except Exception as e:  # nibabel raises ImageFileError, OSError, zlib.error, EOFError, ...
        raise DataError(f"{name}: not a readable NIfTI file ({type(e).__name__}: {e})") from e
    if not isinstance(img, nib.Nifti1Pair):  # Nifti1Image, Nifti2Image and the .hdr/.img pairs
        raise DataError(f"{name}: not a NIfTI file (nibabel read it as {type(img).__name__})")

    shape = tuple(int(s) for s in img.shape)
    if len(shape) > 3 and all(s == 1 for s in shape[3:]):
        squeeze = True  # (X, Y, Z, 1): a 3D volume written as a one-frame series
    elif len(shape) != 3:
        raise DataError(f"{name}: volume must be 3D, got {len(shape)}D shape {shape}")
    else:
        squeeze = False
    shape3 = shape[:3]
    if min(shape3) < 1:
        raise DataError(f"{name}: volume has an empty axis, shape {shape}")

    zooms = _raw_zooms(img, name)
    try:
        spacing = _check_spacing(zooms, "voxel size (header pixdim)")
    except DataError as e:
        raise DataError(f"{name}: {e}") from None
    try:
        dtype = np.dtype(img.get_data_dtype())
        affine = np.array(img.affine, dtype=np.float64)
    except Exception as e:
        raise DataError(f"{name}: header cannot be read ({type(e).__name__}: {e})") from e
    if not np.isfinite(affine).all():
        raise DataError(f"{name}: the affine (qform/sform) holds NaN or Inf values")
    header = Header(name, shape3, spacing, affine, network_axes(spacing), dtype)
    return img, header, squeeze


def load_volume(path, *, is_label: bool = False) -> Volume:
    """Read a 3D NIfTI file and return it in network orientation.

    Images come back as float32 and must be finite; labels (``is_label=True``) as int64 and must
    hold integers only (a float label with integral values is accepted and converted). The spacing
    is the header's voxel size (``pixdim``), which must be positive and finite.
    """
    img, header, squeeze = _open(path)
    name = header.path
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            raw = np.asanyarray(img.dataobj)
    except MemoryError:
        raise ResourceError(f"{name}: not enough memory to read a volume of shape {header.file_shape}") from None
    except Exception as e:
        raise DataError(f"{name}: data cannot be read ({type(e).__name__}: {e}); "
                        "the file may be truncated or corrupt") from e
    if str(name).endswith(".gz"):
        _check_gzip_stream(name)
    if squeeze:
        raw = raw.reshape(header.file_shape)
    if raw.dtype.kind not in "biuf":
        raise DataError(f"{name}: unsupported data type {raw.dtype} (need integer or real float voxels)")

    array = _as_label(raw, name) if is_label else _as_image(raw, img, name)

    axes = header.axes
    return Volume(
        array=np.ascontiguousarray(array.transpose(axes)),
        spacing=header.network_spacing,
        affine=header.affine,
        axes=axes,
        file_shape=header.file_shape,
        path=name,
    )


def to_file_orientation(array: np.ndarray, volume: Volume) -> np.ndarray:
    """Undo :func:`load_volume`'s permutation: network ``(X, Y, Z)`` or ``(C, X, Y, Z)`` back to the
    file's axis order, so that the result fits ``volume.affine`` (e.g. to save a prediction).

    Returns a view when possible; a leading channel axis stays first.
    """
    array = np.asarray(array)
    axes = _check_axes(volume.axes)
    inverse = tuple(int(i) for i in np.argsort(axes))
    net_shape = tuple(volume.file_shape[a] for a in axes)
    if array.ndim == 3:
        perm = inverse
    elif array.ndim == 4:
        perm = (0,) + tuple(i + 1 for i in inverse)
    else:
        raise DataError(f"{volume.path}: to_file_orientation needs an (X, Y, Z) or (C, X, Y, Z) array, "
                        f"got shape {array.shape}")
    if array.shape[-3:] != net_shape:
        raise DataError(f"{volume.path}: array spatial shape {array.shape[-3:]} does not match the "
                        f"volume's network shape {net_shape}")
    return array.transpose(perm)


def boxes_to_network(boxes, axes) -> list[tuple[int, int, int, int, int, int]]:
    """Map inclusive boxes ``[x0, y0, z0, x1, y1, z1]`` from file array axes to network axes.

    ``axes`` is :attr:`Volume.axes`; network axis i is file axis ``axes[i]``.
    """
    axes = _check_axes(axes)
    out = []
    for k, box in enumerate(boxes):
        b = _check_box(box, f"box {k}")
        lo, hi = b[:3], b[3:]
        out.append(tuple(lo[a] for a in axes) + tuple(hi[a] for a in axes))
    return out


# --------------------------------------------------------------------------------------- helpers

def _check_spacing(spacing: Sequence[float], what: str) -> tuple[float, float, float]:
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise DataError(f"{what} must be 3 numbers, got {spacing!r}") from None
    if len(sp) != 3:
        raise DataError(f"{what} must have 3 values, got {len(sp)}: {sp}")
    if not all(math.isfinite(s) and s > 0 for s in sp):
        raise DataError(f"{what} must be positive and finite, got {sp}")
    return sp


def _check_gzip_stream(name: str) -> None:
    """Decompress the whole file to its end, where gzip checks its CRC and length: nibabel reads only
    the bytes it needs, so damage inside the data would otherwise come back as wrong voxel values."""
    try:
        with gzip.open(name, "rb") as f:
            while f.read(1 << 24):
                pass
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{name}: data cannot be read ({type(e).__name__}: {e}); "
                        "the file may be truncated or corrupt") from None


def _raw_zooms(img, name: str) -> tuple[float, ...]:
    """The header's pixdim[1:4] as stored: nibabel silently replaces zero voxel sizes by 1 and
    negative ones by their absolute value when it loads a header, which would hide a broken file."""
    try:
        fm = img.file_map
        hdr_file = (fm["header"] if "header" in fm else fm["image"]).filename  # .hdr of a pair, else the .nii
        with ImageOpener(hdr_file) as f:
            raw_hdr = type(img.header).from_fileobj(f, check=False)
        return tuple(float(z) for z in raw_hdr["pixdim"][1:4])
    except Exception as e:
        raise DataError(f"{name}: header cannot be read ({type(e).__name__}: {e})") from e


def _as_image(raw: np.ndarray, img, name: str) -> np.ndarray:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = raw.astype(np.float32, copy=False)
    if raw.dtype.kind == "f":  # integers always fit float32 and are finite
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            if _unscaled_is_finite(img) and (img.dataobj.slope != 1 or img.dataobj.inter != 0):
                raise DataError(
                    f"{name}: data cannot be decoded: scaling (scl_slope={img.dataobj.slope}, "
                    f"scl_inter={img.dataobj.inter}) overflows to Inf in {bad} voxels")
            if raw.dtype.kind == "f" and np.isfinite(raw).all():
                raise DataError(f"{name}: {bad} voxel values exceed the float32 range")
            raise DataError(f"{name}: image has {bad} NaN or Inf voxels (all voxels must be finite)")
    return arr


def _unscaled_is_finite(img) -> bool:
    try:
        u = np.asanyarray(img.dataobj.get_unscaled())
    except Exception:
        return False
    return u.dtype.kind != "f" or bool(np.isfinite(u).all())


_INT64 = np.iinfo(np.int64)


def _as_label(raw: np.ndarray, name: str) -> np.ndarray:
    if raw.dtype.kind in "biu":
        if raw.dtype == np.uint64 and raw.size and raw.max() > _INT64.max:
            raise DataError(f"{name}: label values exceed the int64 range")
        return raw.astype(np.int64, copy=False)
    finite = np.isfinite(raw)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise DataError(f"{name}: label has {bad} NaN or Inf voxels (labels must be integers)")
    frac = raw != np.rint(raw)
    if frac.any():
        n = int(np.count_nonzero(frac))
        example = float(raw[frac].flat[0])
        raise DataError(f"{name}: label has {n} non-integer voxel values (e.g. {example}); "
                        "labels must be integers")
    if raw.size and (raw.min() < -(2.0**63) or raw.max() >= 2.0**63):
        raise DataError(f"{name}: label values exceed the int64 range")
    return raw.astype(np.int64)


def _check_axes(axes) -> tuple[int, int, int]:
    try:
        t = tuple(int(a) for a in axes)
    except (TypeError, ValueError):
        raise DataError(f"axes must be a permutation of (0, 1, 2), got {axes!r}") from None
    if sorted(t) != [0, 1, 2]:
        raise DataError(f"axes must be a permutation of (0, 1, 2), got {axes!r}")
    return t


def _check_box(box, what: str) -> tuple[int, int, int, int, int, int]:
    """A box must be 6 non-negative integers with x0 <= x1, y0 <= y1, z0 <= z1 (inclusive)."""
    if isinstance(box, (str, bytes)) or not hasattr(box, "__len__") or len(box) != 6:
        raise DataError(f"{what} must be 6 integers [x0, y0, z0, x1, y1, z1], got {box!r}")
    vals = []
    for v in box:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise DataError(f"{what} must hold integers only, got {box!r}")
        vals.append(int(v))
    if min(vals) < 0:
        raise DataError(f"{what} has a negative coordinate: {vals}")
    for i, axis in enumerate("xyz"):
        if vals[i + 3] < vals[i]:
            raise DataError(f"{what} is inverted on {axis} ({axis}1={vals[i + 3]} < {axis}0={vals[i]}): {vals}")
    return tuple(vals)
