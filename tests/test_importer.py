"""ahnet import: loose NIfTI files into a data set, checked like training data."""

from __future__ import annotations

import json
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
