"""Synthetic anisotropic phantoms (ahnet.synth): valid data sets, deterministic, and hard in the way
the paper needs (faint lesions that only their extent across slices tells from look-alikes)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from ahnet import synth
from ahnet.cli import main
from ahnet.data.dataset import verify_dataset
from ahnet.errors import ConfigError, DataError

SEG_SHAPE = (64, 64, 12)
DET_SHAPE = (64, 64, 16)


@pytest.fixture(scope="module")
def seg_dir(tmp_path_factory):
    return synth.make_seg_dataset(tmp_path_factory.mktemp("synth") / "seg", cases=3, seed=7, shape=SEG_SHAPE)


@pytest.fixture(scope="module")
def det_dir(tmp_path_factory):
    return synth.make_det_dataset(tmp_path_factory.mktemp("synth") / "det", cases=4, seed=7, shape=DET_SHAPE)


def test_seg_dataset_is_valid_ct(seg_dir):
    report = verify_dataset(seg_dir, progress=False)
    assert report.ok, report.text()
    meta = json.loads((seg_dir / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "liver": 1, "lesion": 2} and meta["numTraining"] == 3
    for case in ("case_000", "case_001", "case_002"):
        img = nib.load(seg_dir / "imagesTr" / f"{case}_0000.nii.gz")
        lab = np.asarray(nib.load(seg_dir / "labelsTr" / f"{case}.nii.gz").dataobj)
        hu = np.asarray(img.dataobj)
        sx, sy, sz = img.header.get_zooms()
        assert img.shape == SEG_SHAPE and hu.dtype == np.int16
        assert 0.6 <= sx == sy <= 0.9 and 2.5 <= sz <= 5.0  # thick slices, fine in-plane
        assert set(np.unique(lab)) <= {0, 1, 2} and (lab == 1).sum() > 0.05 * lab.size
        assert hu.min() <= -900  # air around the body
        assert 40 <= np.median(hu[lab == 1]) <= 120  # liver HU


def test_det_dataset_is_valid_dbt(det_dir):
    report = verify_dataset(det_dir, progress=False)
    assert report.ok, report.text()
    boxes = json.loads((det_dir / "boxesTr.json").read_text())
    assert sum(1 for b in boxes.values() if not b) == round(4 * synth.DetSettings().negative_fraction)
    truth = json.loads((det_dir / "synth.json").read_text())["cases"]
    for case, case_boxes in boxes.items():
        img = nib.load(det_dir / "imagesTr" / f"{case}_0000.nii.gz")
        assert img.header.get_zooms() == pytest.approx((0.3, 0.3, 1.0))
        for box in case_boxes:
            lo, hi = np.array(box[:3]), np.array(box[3:])
            assert (lo >= 0).all() and (hi < np.array(DET_SHAPE)).all() and (lo <= hi).all()
        assert [m["box"] for m in truth[case]["masses"]] == case_boxes


def test_deterministic_per_seed_and_case():
    a = synth.seg_case(3, 1, SEG_SHAPE)
    b = synth.seg_case(3, 1, SEG_SHAPE)
    c = synth.seg_case(4, 1, SEG_SHAPE)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[3] == b[3]
    assert not np.array_equal(a[0], c[0])
    d1 = synth.det_case(3, 2, DET_SHAPE)
    d2 = synth.det_case(3, 2, DET_SHAPE)
    assert np.array_equal(d1[0], d2[0]) and d1[1] == d2[1]


def test_case_does_not_depend_on_case_count(tmp_path):
    small = synth.make_seg_dataset(tmp_path / "a", cases=2, seed=1, shape=(48, 48, 8))
    large = synth.make_seg_dataset(tmp_path / "b", cases=3, seed=1, shape=(48, 48, 8))
    for folder in ("imagesTr/case_001_0000.nii.gz", "labelsTr/case_001.nii.gz"):
        assert np.array_equal(np.asarray(nib.load(small / folder).dataobj), np.asarray(nib.load(large / folder).dataobj))


def _slice_contrast(image, label, lesion_mask, z):
    """Mean HU of the lesion in slice z minus that of the liver around it (within 3x its radius)."""
    region = lesion_mask[..., z]
    cx, cy = np.argwhere(region).mean(axis=0)
    radius = np.sqrt(region.sum() / np.pi)
    x, y = np.meshgrid(np.arange(image.shape[0]), np.arange(image.shape[1]), indexing="ij")
    ring = ((x - cx) ** 2 + (y - cy) ** 2 <= (3 * radius) ** 2) & (label[..., z] == 1)
    return float(image[..., z][region].mean() - image[..., z][ring].mean())


def test_faint_lesions_need_neighbouring_slices():
    """Faint lesions have the contrast of the single-slice look-alikes, so no single slice tells
    them apart; they span >= 4 slices, which is what 3D context sees. Normal lesions stand out."""
    settings = synth.SegSettings(faint_fraction=0.6, lesions=(2, 4), empty_fraction=0.0)
    faint_seen = 0
    for index in range(4):
        image, label, _, truth = synth.seg_case(11, index, (96, 96, 24), settings)
        assert truth["lookalikes"] >= 5  # look-alike blobs in many liver slices
        lesion_voxels = label == 2
        for lesion in truth["lesions"]:
            if lesion["kind"] != "faint":
                assert abs(lesion["contrast_hu"]) >= 15
                continue
            faint_seen += 1
            low, high = settings.faint_hu
            assert low <= abs(lesion["contrast_hu"]) <= high
            assert lesion["slices"] >= 4
            cx, cy, cz = (int(round(c)) for c in lesion["centre_voxel"])
            z = min(max(cz, 0), image.shape[2] - 1)
            if not lesion_voxels[cx, cy, z]:
                continue
            # this lesion's connected region in the centre slice, measured in the written image
            mask = np.zeros_like(lesion_voxels)
            x, y = np.meshgrid(np.arange(image.shape[0]), np.arange(image.shape[1]), indexing="ij")
            r_px = lesion["diameter_mm"] / 2 / truth["spacing"][0]
            mask[..., z] = lesion_voxels[..., z] & ((x - cx) ** 2 + (y - cy) ** 2 <= (1.3 * r_px) ** 2)
            measured = _slice_contrast(image.astype(np.float32), label, mask, z)
            assert abs(measured) < high + 8  # as faint in the image as its recorded contrast says
            assert np.sign(measured) == np.sign(lesion["contrast_hu"]) or abs(measured) < 4
    assert faint_seen >= 2


def test_settings_and_folders_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="unknown phantom setting"):
        synth.make_seg_dataset(tmp_path / "x", cases=1, shape=(48, 48, 8), fuzz=1)
    with pytest.raises(ConfigError, match="low <= high"):
        synth.make_seg_dataset(tmp_path / "x", cases=1, shape=(48, 48, 8), lesion_mm=(20, 5))
    with pytest.raises(ConfigError, match="shape"):
        synth.make_det_dataset(tmp_path / "x", cases=1, shape=(8, 8, 2))
    with pytest.raises(ConfigError, match="cases"):
        synth.make_det_dataset(tmp_path / "x", cases=0)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "precious.txt").write_text("keep")
    with pytest.raises(DataError, match="not empty"):
        synth.make_seg_dataset(user, cases=1, shape=(48, 48, 8))
    with pytest.raises(DataError, match="not a synthetic data set"):
        synth.make_seg_dataset(user, cases=1, shape=(48, 48, 8), overwrite=True)
    assert (user / "precious.txt").read_text() == "keep"
    assert not list(tmp_path.glob(".*partial*"))  # nothing half-written left behind


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "det"
    assert main(["synth", "det", "--out", str(out), "--cases", "2", "--shape", "48x48x12",
                 "--set", "negative_fraction=0", "--set", "mass_mm=4,6"]) == 0
    boxes = json.loads((out / "boxesTr.json").read_text())
    assert all(boxes.values())  # no negatives asked for
    assert main(["synth", "det", "--out", str(out), "--cases", "1", "--shape", "48x48x12", "--overwrite"]) == 0
    assert len(json.loads((out / "boxesTr.json").read_text())) == 1
    assert main(["synth", "seg", "--out", str(tmp_path / "s"), "--set", "faint_hu"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
