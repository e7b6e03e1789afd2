"""Build a data set from loose NIfTI files or DICOM series, one case at a time (``ahnet import``).

Real scans rarely arrive in the nnU-Net layout; this copies an image (and its label) into
``imagesTr/{case}_0000.nii.gz`` and ``labelsTr/{case}.nii.gz``, writes or checks ``dataset.json``
and keeps ``numTraining`` right, after reading both files with the same checks as training does
(3D, finite, positive spacing, integer labels inside the declared values, same grid).

A folder holding a DICOM series (scanners export those, not NIfTI) is first converted by SimpleITK
(the optional ``dicom`` extra) into a temporary NIfTI file outside the data set, which then goes
the NIfTI way: SimpleITK applies the rescale slope and intercept (HU for CT) and writes the
series' LPS geometry as the NIfTI's RAS affine, so nothing about the conversion is ours to get wrong.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from ..errors import ConfigError, DataError
from ..fileio import atomic_write, atomic_write_text
from .volume import Volume, load_volume

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


def _dicom_to_nifti(folder: Path, dst: Path, series: str | None, role: str) -> None:
    """Write the DICOM series in ``folder`` (``series``: its Series Instance UID, needed only when
    the folder holds several) to the NIfTI file ``dst`` with SimpleITK's own reader and writer."""
    try:
        import SimpleITK as sitk
    except ImportError:
        raise ConfigError(f"{folder}: reading a DICOM series needs SimpleITK: pip install 'ahnet[dicom]' "
                          "(or pip install SimpleITK)") from None
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's own "No Series were found" goes to stderr
    try:
        ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    if not ids:
        raise DataError(f"{folder}: no DICOM series found in this folder (--{role} takes a NIfTI file or a "
                        "folder holding the files of a DICOM series)")
    if series is None and len(ids) > 1:
        choose = "choose one with --series UID" if role == "image" else "keep only the label's series in this folder"
        raise DataError(f"{folder}: {len(ids)} DICOM series ({', '.join(ids)}); {choose}")
    if series is not None and series not in ids:
        raise DataError(f"{folder}: no DICOM series {series!r}; the folder holds {', '.join(ids)}")
    uid = series or ids[0]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    try:
        sitk.WriteImage(reader.Execute(), str(dst))
    except RuntimeError as e:  # SimpleITK reports every ITK exception as RuntimeError
        raise DataError(f"{folder}: DICOM series {uid} cannot be read: {str(e).strip().splitlines()[-1]}") from None


def _as_nifti(path: Path, tmp: Path, role: str, series: str | None) -> Path:
    """``path`` itself for a NIfTI file, else its DICOM series converted into ``tmp``."""
    if not path.is_dir():
        if series is not None and role == "image":
            raise ConfigError(f"{path}: --series picks a series of a DICOM folder; this is a file")
        return path
    dst = tmp / f"{role}.nii.gz"
    _dicom_to_nifti(path, dst, series if role == "image" else None, role)
    return dst


def _load(path: Path, shown: Path, **kwargs) -> Volume:
    """:func:`load_volume`, with errors naming what the user gave rather than a converted copy."""
    try:
        return load_volume(path, **kwargs)
    except DataError as e:
        if path == shown:
            raise
        raise DataError(str(e).replace(str(path), f"{shown} (DICOM series)")) from None


def add_case(dataset: str | Path, image: str | Path, label: str | Path | None = None, *, case: str | None = None,
             labels: Sequence[str] | None = None, modality: str = "CT", overwrite: bool = False,
             series: str | None = None) -> str:
    """Add one case to ``dataset`` (created if needed); returns the case name.

    ``image`` and ``label`` are NIfTI files or folders holding a DICOM series; ``series`` (a Series
    Instance UID) picks the image's series when its folder holds several. A folder's case name
    defaults to the folder's name. ``labels`` names the label values 0, 1, 2, ... (``background``
    first); it is required when the data set has no ``dataset.json`` yet and must agree with it
    otherwise.
    """
    with tempfile.TemporaryDirectory(prefix="ahnet-import-") as tmp:
        return _add_case(Path(dataset), Path(image), None if label is None else Path(label), Path(tmp),
                         case=case, labels=labels, modality=modality, overwrite=overwrite, series=series)


def _add_case(root: Path, image: Path, label: Path | None, tmp: Path, *, case: str | None,
              labels: Sequence[str] | None, modality: str, overwrite: bool, series: str | None) -> str:
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

    image_file = _as_nifti(image, tmp, "image", series)
    label_file = None if label is None else _as_nifti(label, tmp, "label", None)
    volume = _load(image_file, image)
    if label is not None:
        truth = _load(label_file, label, is_label=True)
        if truth.file_shape != volume.file_shape:
            raise DataError(f"{label}: shape {truth.file_shape} differs from the image's {volume.file_shape} ({image})")
        if not np.allclose(truth.affine, volume.affine, atol=1e-3):
            raise DataError(f"{label}: its affine (voxel-to-world geometry) differs from the image's ({image})")
        allowed = set(meta["labels"].values())
        found = set(np.unique(truth.array).tolist())
        if not found <= allowed:
            raise DataError(f"{label}: label values {sorted(found - allowed)} are not in dataset.json's labels "
                            f"{meta['labels']}")

    _copy_nifti(image_file, target)
    if label is not None:
        _copy_nifti(label_file, root / "labelsTr" / f"{name}.nii.gz")
    meta["numTraining"] = sum(1 for p in (root / "imagesTr").iterdir()
                              if p.name.endswith("_0000.nii.gz") and not p.name.startswith("."))
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return name
