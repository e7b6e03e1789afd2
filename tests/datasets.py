"""Small synthetic NIfTI files and nnU-Net-format data sets for tests (import: ``from datasets import ...``).

Everything is tiny and deterministic (seeded), so tests that use these helpers stay fast.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

#: byte offsets of NIfTI-1 header fields
PIXDIM_OFFSET = 76  # pixdim[0..7], float32 each
SCL_SLOPE_OFFSET = 112
SCL_INTER_OFFSET = 116


def write_nifti(path, array, spacing: Sequence[float] = (1.0, 1.0, 1.0), affine=None, dtype=None) -> Path:
    """Write ``array`` as a NIfTI-1 file. The affine defaults to ``diag(spacing)``; the header's
    voxel size is always ``spacing`` (even with an explicit affine), so both can be set apart."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array)
    if dtype is not None:
        array = array.astype(dtype)
    if affine is None:
        sp3 = (list(map(float, spacing[:3])) + [1.0, 1.0])[:3]
        affine = np.diag([*sp3, 1.0])
    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    zooms = list(spacing) + [1.0] * (array.ndim - len(spacing))
    img.header.set_zooms(zooms[: array.ndim])
    img.header.set_data_dtype(array.dtype)
    nib.save(img, str(path))
    return path


def patch_header_float(path, offset: int, value: float) -> None:
    """Overwrite one float32 header field in place (gzip-aware), bypassing nibabel's checks: this is
    how broken files (zero voxel size, overflowing scaling) are made."""
    path = Path(path)
    gz = path.name.endswith(".gz")
    raw = bytearray(gzip.decompress(path.read_bytes()) if gz else path.read_bytes())
    struct.pack_into("<f", raw, offset, float(value))
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))


def image_array(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 100.0, size=shape).astype(np.float32)


def label_array(shape, n_classes: int = 3, seed: int = 0) -> np.ndarray:
    """A label holding every class 0..n_classes-1: nested boxes around the centre."""
    lab = np.zeros(shape, dtype=np.uint8)
    c = [s // 2 for s in shape]
    for k in range(1, n_classes):
        r = [max(1, s // (2 + 2 * k)) for s in shape]
        lab[tuple(slice(ci - ri, ci + ri + 1) for ci, ri in zip(c, r))] = k
    return lab


def write_dataset_json(root, channel_names=None, labels=None, num_training=0, file_ending=".nii.gz",
                       **extra) -> Path:
    meta = {
        "channel_names": channel_names if channel_names is not None else {"0": "CT"},
        "labels": labels if labels is not None else {"background": 0, "liver": 1, "lesion": 2},
        "numTraining": num_training,
        "file_ending": file_ending,
        **extra,
    }
    path = Path(root) / "dataset.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2))
    return path


def case_names(cases: int) -> list[str]:
    return [f"case_{i:03d}" for i in range(cases)]


def make_seg_dataset(root, cases: int = 3, shape=(20, 18, 6), spacing=(0.8, 0.8, 3.0),
                     channels: Sequence[str] = ("CT",), labels: Sequence[str] = ("background", "liver", "lesion"),
                     file_ending: str = ".nii.gz", seed: int = 0) -> Path:
    """An nnU-Net v2 segmentation data set: ``cases`` cases named case_000, case_001, ..."""
    root = Path(root)
    label_map = {name: i for i, name in enumerate(labels)}
    write_dataset_json(root, {str(i): c for i, c in enumerate(channels)}, label_map, cases, file_ending)
    for k, case in enumerate(case_names(cases)):
        for ch in range(len(channels)):
            write_nifti(root / "imagesTr" / f"{case}_{ch:04d}{file_ending}",
                        image_array(shape, seed + 10 * k + ch), spacing)
        write_nifti(root / "labelsTr" / f"{case}{file_ending}", label_array(shape, len(labels)), spacing)
    return root


def default_boxes(cases: int, shape) -> dict[str, list[list[int]]]:
    """Case 0 is negative (no box); the others hold one or two boxes inside ``shape``."""
    out = {}
    for k, case in enumerate(case_names(cases)):
        boxes = []
        for j in range(k % 3):
            lo = [1 + j, 2 + j, j % max(1, shape[2] - 1)]
            hi = [min(s - 1, l + 3) for s, l in zip(shape, lo)]
            boxes.append(lo + hi)
        out[case] = boxes
    return out


def make_det_dataset(root, cases: int = 3, shape=(24, 20, 5), spacing=(0.1, 0.1, 1.0), boxes=None,
                     with_labels: bool = False, file_ending: str = ".nii.gz", seed: int = 0) -> Path:
    """A detection (DBT-style) data set: images plus ``boxesTr.json`` (file axes, inclusive);
    ``with_labels`` adds lesion masks in labelsTr (background 0 / lesion 1)."""
    root = Path(root)
    write_dataset_json(root, {"0": "DBT"}, {"background": 0, "lesion": 1}, cases, file_ending)
    boxes = default_boxes(cases, shape) if boxes is None else boxes
    for k, case in enumerate(case_names(cases)):
        write_nifti(root / "imagesTr" / f"{case}_0000{file_ending}", image_array(shape, seed + k), spacing)
        if with_labels:
            lab = np.zeros(shape, dtype=np.uint8)
            for b in boxes.get(case, []):
                lab[b[0]:b[3] + 1, b[1]:b[4] + 1, b[2]:b[5] + 1] = 1
            write_nifti(root / "labelsTr" / f"{case}{file_ending}", lab, spacing)
    (root / "boxesTr.json").write_text(json.dumps(boxes))
    return root
