"""ahnet import: loose NIfTI files into a data set, checked like training data."""

from __future__ import annotations

import json
import locale
from pathlib import Path

import numpy as np
import pytest
from datasets import label_array, write_nifti

from ahnet.cli import main
from ahnet.data.dataset import verify_dataset
from ahnet.data.importer import add_case
from ahnet.errors import ConfigError, DataError

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.fixture
def files(tmp_path):
    shape, spacing = (20, 18, 6), (0.8, 0.8, 3.0)
    image = write_nifti(tmp_path / "in" / "scan one.nii", np.random.default_rng(0).normal(size=shape).astype(np.float32),
                        spacing)
    label = write_nifti(tmp_path / "in" / "label.nii.gz", label_array(shape), spacing)
    return image, label


def test_import_builds_a_valid_dataset(files, tmp_path):
    image, label = files
    out = tmp_path / "ds"
    assert add_case(out, image, label, case="a", labels=["background", "liver", "lesion"]) == "a"
    assert main(["import", str(out), "--image", str(image), "--label", str(label), "--case", "b"]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["labels"] == {"background": 0, "liver": 1, "lesion": 2}
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["a_0000.nii.gz", "b_0000.nii.gz"]
    assert verify_dataset(out, progress=False).ok


def test_import_refuses_what_training_would(files, tmp_path, capsys):
    image, label = files
    out = tmp_path / "ds"
    with pytest.raises(ConfigError, match="needs --labels"):
        add_case(out, image, label)
    with pytest.raises(ConfigError, match="case name"):
        add_case(out, image, label, labels=["background", "liver", "lesion"])  # "scan one": a space
    with pytest.raises(DataError, match="not in dataset.json"):
        add_case(out, image, label, case="x", labels=["background", "liver"])
    other = write_nifti(tmp_path / "in" / "small.nii.gz", np.zeros((20, 18, 5), np.uint8), (0.8, 0.8, 3.0))
    with pytest.raises(DataError, match="shape"):
        add_case(out, image, other, case="x", labels=["background", "liver", "lesion"])
    add_case(out, image, label, case="x", labels=["background", "liver", "lesion"])
    assert main(["import", str(out), "--image", str(image), "--case", "x"]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="declares labels"):
        add_case(out, image, label, case="y", labels=["background", "organ"])
    assert not [p for p in out.rglob(".*")]  # nothing half-written


@pytest.mark.skipif(not (REAL / "chaos_ct" / "chaos_ct_sample_image.nii.gz").is_file(), reason="real CT not present")
def test_import_real_ct(tmp_path):
    out = tmp_path / "chaos"
    add_case(out, REAL / "chaos_ct" / "chaos_ct_sample_image.nii.gz", REAL / "chaos_ct" / "chaos_ct_sample_liver_gt.nii.gz",
             case="chaos", labels=["background", "liver", "lesion"])
    report = verify_dataset(out, progress=False)
    assert report.ok and report.summary["label_voxels"]["liver"] == 1_342_595


# -- DICOM series ------------------------------------------------------------------------------------

DICOM_SHAPE, DICOM_SPACING, DICOM_ORIGIN = (16, 12, 5), (0.8, 0.7, 2.5), (-100.5, 20.25, -30.0)


def _dicom_volume(sitk, seed: int = 0):
    """An int16 CT-like volume in HU with an oblique direction (rotated about z, tilted about x)."""
    hu = np.random.default_rng(seed).integers(-1000, 2000, size=DICOM_SHAPE[::-1]).astype(np.int16)  # (z, y, x)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(DICOM_SPACING)
    image.SetOrigin(DICOM_ORIGIN)
    a, b = np.deg2rad(20), np.deg2rad(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    image.SetDirection((rz @ rx).ravel().tolist())
    return image


def _write_series(sitk, image, folder: Path, uid: str) -> Path:
    """One file per slice with the tags a scanner writes (SimpleITK's "write a DICOM series" recipe);
    stored values are HU + 1024 with a rescale intercept of -1024, as CT files usually are.
    GDCM's writer switches the process to the C locale (Python's text files would then be read as
    ASCII in every later test), so the locale is put back."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        return _write_slices(sitk, image, folder, uid)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slices(sitk, image, folder: Path, uid: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    sx, sy, sz = image.GetSpacing()
    for i in range(image.GetDepth()):
        tags = {
            "0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{uid}.{i + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.9", "0020|000e": uid, "0020|0013": str(i + 1),
            "0020|0032": "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, i)))),
            "0020|0037": "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7]))),
            "0028|0030": f"{sy}\\{sx}", "0018|0050": str(sz), "0028|1052": "-1024", "0028|1053": "1",
        }
        slice_ = image[:, :, i]
        for key, value in tags.items():
            slice_.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{i:03d}.dcm"))
        writer.Execute(slice_)
    return folder


def test_import_dicom_series_keeps_geometry_and_hu(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    import nibabel as nib

    image = _dicom_volume(sitk)
    series = _write_series(sitk, image, tmp_path / "ct_series", "1.2.826.0.1.3680043.2.1125.1")
    hu = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # (x, y, z), as NIfTI stores it
    raw = np.frombuffer((series / "slice000.dcm").read_bytes()[-hu[:, :, 0].size * 2:], "<i2").reshape(12, 16)
    assert np.array_equal(raw.T.astype(int), hu[:, :, 0] + 1024)  # the files store raw values, not HU

    sitk.WriteImage(image, str(tmp_path / "reference.nii.gz"))
    reference = nib.load(tmp_path / "reference.nii.gz").affine
    label = write_nifti(tmp_path / "label.nii.gz", (hu > 500).astype(np.uint8), DICOM_SPACING, affine=reference)
    out = tmp_path / "ds"
    assert add_case(out, series, label, labels=["background", "liver"]) == "ct_series"  # the folder's name
    case = nib.load(out / "imagesTr" / "ct_series_0000.nii.gz")
    assert case.shape == DICOM_SHAPE
    assert np.allclose(case.header.get_zooms(), DICOM_SPACING, atol=1e-4)
    assert np.array_equal(np.asarray(case.dataobj), hu)
    # the affine is what SimpleITK writes for the in-memory volume, i.e. its LPS geometry in RAS
    assert np.allclose(case.affine, reference, atol=1e-4)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    direction = np.array(image.GetDirection()).reshape(3, 3)
    assert np.allclose(case.affine[:3, :3], lps_to_ras @ direction @ np.diag(DICOM_SPACING), atol=1e-4)
    assert np.allclose(case.affine[:3, 3], lps_to_ras @ np.array(DICOM_ORIGIN), atol=1e-4)

    assert main(["import", str(out), "--image", str(series), "--label", str(label), "--case", "b"]) == 0
    assert verify_dataset(out, progress=False).ok
    assert not [p for p in out.rglob(".*")]


def test_import_dicom_folder_with_two_series_or_none(tmp_path, capsys):
    sitk = pytest.importorskip("SimpleITK")
    folder = tmp_path / "study"
    first, second = "1.2.826.0.1.3680043.2.1125.1", "1.2.826.0.1.3680043.2.1125.2"
    _write_series(sitk, _dicom_volume(sitk, 0), folder / "a", first)
    _write_series(sitk, _dicom_volume(sitk, 1), folder / "b", second)
    for path in (folder / "b").iterdir():
        path.rename(folder / "a" / f"b_{path.name}")
    mixed, out = folder / "a", tmp_path / "ds"
    with pytest.raises(DataError, match="2 DICOM series") as info:
        add_case(out, mixed, labels=["background", "liver"])
    assert first in str(info.value) and second in str(info.value) and "--series" in str(info.value)
    with pytest.raises(DataError, match="no DICOM series '9.9'"):
        add_case(out, mixed, labels=["background", "liver"], series="9.9")
    assert main(["import", str(out), "--image", str(mixed), "--series", second, "--labels", "background,liver",
                 "--case", "second"]) == 0
    import nibabel as nib

    written = np.asarray(nib.load(out / "imagesTr" / "second_0000.nii.gz").dataobj)
    assert np.array_equal(written, sitk.GetArrayFromImage(_dicom_volume(sitk, 1)).transpose(2, 1, 0))

    (tmp_path / "empty").mkdir()
    assert main(["import", str(out), "--image", str(tmp_path / "empty"), "--case", "e"]) == 2
    err = capsys.readouterr().err
    assert "no DICOM series" in err and str(tmp_path / "empty") in err and "WARNING" not in err
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 1


def test_import_dicom_without_simpleitk_says_what_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # import SimpleITK now raises ImportError
    (tmp_path / "series").mkdir()
    with pytest.raises(ConfigError, match=r"pip install 'ahnet\[dicom\]'"):
        add_case(tmp_path / "ds", tmp_path / "series", labels=["background", "liver"])
