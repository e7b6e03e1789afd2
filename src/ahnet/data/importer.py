"""Build a data set from loose NIfTI files, one case at a time (``ahnet import``).

Real scans rarely arrive in the nnU-Net layout; this copies an image (and its label) into
``imagesTr/{case}_0000.nii.gz`` and ``labelsTr/{case}.nii.gz``, writes or checks ``dataset.json``
and keeps ``numTraining`` right, after reading both files with the same checks as training does
(3D, finite, positive spacing, integer labels inside the declared values, same grid).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from ..errors import ConfigError, DataError
from ..fileio import atomic_write, atomic_write_text
from .volume import load_volume

_CASE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _case_name(image: Path, case: str | None) -> str:
    name = case or re.sub(r"\.nii(\.gz)?$", "", image.name)
    if not _CASE.match(name):
        raise ConfigError(f"case name {name!r}: use letters, digits, '_', '-' and '.' only (pass --case)")
    return name


def _copy_nifti(src: Path, dst: Path) -> None:
    """Copy as .nii.gz, through a temporary file so no half-written case is ever visible."""

    def write(tmp: str) -> None:
        if src.name.endswith(".nii.gz"):
            shutil.copyfile(src, tmp)
        else:
            nib.save(nib.load(str(src)), tmp)

    atomic_write(dst, write, suffix=".nii.gz")


def add_case(dataset: str | Path, image: str | Path, label: str | Path | None = None, *, case: str | None = None,
             labels: Sequence[str] | None = None, modality: str = "CT", overwrite: bool = False) -> str:
    """Add one case to ``dataset`` (created if needed); returns the case name.

    ``labels`` names the label values 0, 1, 2, ... (``background`` first); it is required when the
    data set has no ``dataset.json`` yet and must agree with it otherwise.
    """
    root, image = Path(dataset), Path(image)
    meta_path = root / "dataset.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{meta_path}: not readable JSON ({e})") from e
        if labels is not None and list(meta.get("labels", {})) != list(labels):
            raise ConfigError(f"{meta_path} declares labels {list(meta.get('labels', {}))}, not {list(labels)}")
        if meta.get("file_ending", ".nii.gz") != ".nii.gz" or len(meta.get("channel_names", {})) != 1:
            raise DataError(f"{meta_path}: import handles single-channel .nii.gz data sets only")
    else:
        if not labels or labels[0] != "background":
            raise ConfigError("a new data set needs --labels, starting with background (e.g. background,liver,lesion)")
        meta = {"channel_names": {"0": modality}, "labels": {name: i for i, name in enumerate(labels)},
                "numTraining": 0, "file_ending": ".nii.gz"}
    name = _case_name(image, case)
    target = root / "imagesTr" / f"{name}_0000.nii.gz"
    if target.exists() and not overwrite:
        raise DataError(f"{target}: case {name!r} already exists (pass --overwrite to replace it)")

    volume = load_volume(image)
    if label is not None:
        truth = load_volume(label, is_label=True)
        if truth.file_shape != volume.file_shape:
            raise DataError(f"{label}: shape {truth.file_shape} differs from the image's {volume.file_shape} ({image})")
        if not np.allclose(truth.affine, volume.affine, atol=1e-3):
            raise DataError(f"{label}: its affine (voxel-to-world geometry) differs from the image's ({image})")
        allowed = set(meta["labels"].values())
        found = set(np.unique(truth.array).tolist())
        if not found <= allowed:
            raise DataError(f"{label}: label values {sorted(found - allowed)} are not in dataset.json's labels "
                            f"{meta['labels']}")

    _copy_nifti(image, target)
    if label is not None:
        _copy_nifti(Path(label), root / "labelsTr" / f"{name}.nii.gz")
    meta["numTraining"] = sum(1 for p in (root / "imagesTr").iterdir()
                              if p.name.endswith("_0000.nii.gz") and not p.name.startswith("."))
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return name
