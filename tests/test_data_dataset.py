"""ahnet.data.dataset: the nnU-Net v2 raw layout (plus boxesTr.json for detection), the structural
checks of load_dataset and the full read of verify_dataset."""

import json
import sys
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from datasets import (
    SCL_SLOPE_OFFSET,
    case_names,
    image_array,
    label_array,
    make_det_dataset,
    make_seg_dataset,
    patch_header_float,
    write_dataset_json,
    write_nifti,
)

from ahnet.data import CaseFiles, DatasetInfo, VerifyReport, load_dataset, verify_dataset
from ahnet.errors import DataError

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def _meta(root):
    return json.loads((Path(root) / "dataset.json").read_text())


def _set_meta(root, **changes):
    meta = _meta(root)
    meta.update(changes)
    (Path(root) / "dataset.json").write_text(json.dumps(meta))


def _set_boxes(root, boxes):
    (Path(root) / "boxesTr.json").write_text(json.dumps(boxes))


@pytest.fixture
def seg(tmp_path):
    return make_seg_dataset(tmp_path / "Dataset001_Liver")


@pytest.fixture
def det(tmp_path):
    return make_det_dataset(tmp_path / "Dataset002_DBT")


# ----------------------------------------------------------------------------------- load: good

def test_load_seg_dataset(seg):
    info = load_dataset(seg)
    assert isinstance(info, DatasetInfo)
    assert info.root == seg.resolve()
    assert info.task == "seg"
    assert info.modality == "CT"
    assert info.num_classes == 3
    assert info.labels == {"background": 0, "liver": 1, "lesion": 2}
    assert info.file_ending == ".nii.gz" and info.num_training == 3
    assert [c.name for c in info.cases] == ["case_000", "case_001", "case_002"]
    c = info.cases[1]
    assert isinstance(c, CaseFiles)
    assert c.images == [seg / "imagesTr" / "case_001_0000.nii.gz"]
    assert c.label == seg / "labelsTr" / "case_001.nii.gz"
    assert c.boxes is None


def test_load_multichannel_in_channel_order(tmp_path):
    root = make_seg_dataset(tmp_path / "mr", cases=2, channels=("T2", "ADC", "DWI"))
    info = load_dataset(root)
    assert info.channel_names == {"0": "T2", "1": "ADC", "2": "DWI"} and info.modality == "T2"
    assert [p.name for p in info.cases[0].images] == [f"case_000_{i:04d}.nii.gz" for i in range(3)]


def test_cases_sorted_and_names_with_digits(tmp_path):
    root = tmp_path / "d"
    write_dataset_json(root, num_training=3)
    for case in ["liver_0010", "b", "a_1"]:  # "liver_0010" is a case name, not a channel
        write_nifti(root / "imagesTr" / f"{case}_0000.nii.gz", image_array((4, 4, 3)))
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", label_array((4, 4, 3)))
    (root / "imagesTr" / "README.txt").write_text("stray files that are not NIfTI are ignored")
    (root / "imagesTr" / ".DS_Store").write_bytes(b"\0")
    assert [c.name for c in load_dataset(root).cases] == ["a_1", "b", "liver_0010"]


def test_load_nii_ending(tmp_path):
    root = make_seg_dataset(tmp_path / "d", cases=2, file_ending=".nii")
    info = load_dataset(root)
    assert info.file_ending == ".nii" and info.cases[0].images[0].name == "case_000_0000.nii"


def test_load_det_dataset(det):
    info = load_dataset(det)
    assert info.task == "det" and info.modality == "DBT" and info.num_classes == 2
    assert [c.boxes for c in info.cases] == [[], [(1, 2, 0, 4, 5, 3)], [(1, 2, 0, 4, 5, 3), (2, 3, 1, 5, 6, 4)]]
    assert all(c.label is None for c in info.cases)  # no labelsTr at all is fine for detection
    assert all(isinstance(b, tuple) for c in info.cases for b in c.boxes)


def test_load_det_dataset_with_labels(tmp_path):
    info = load_dataset(make_det_dataset(tmp_path / "d", with_labels=True))
    assert info.cases[2].label.name == "case_002.nii.gz"


def test_symlink_inside_root_is_fine(seg):
    src = seg / "imagesTr" / "case_000_0000.nii.gz"
    store = seg / "store"
    store.mkdir()
    shutil.move(src, store / "x.nii.gz")
    os.symlink(store / "x.nii.gz", src)
    assert load_dataset(seg).cases[0].images[0] == src


# -------------------------------------------------------------------------------- dataset.json

def test_not_a_folder(tmp_path):
    with pytest.raises(DataError, match="nowhere: data set folder not found"):
        load_dataset(tmp_path / "nowhere")


def test_missing_dataset_json(seg):
    (seg / "dataset.json").unlink()
    with pytest.raises(DataError, match=r"dataset\.json: not found"):
        load_dataset(seg)


def test_bad_json(seg):
    (seg / "dataset.json").write_text('{"channel_names": {"0": "CT"},, }')
    with pytest.raises(DataError, match=r"dataset\.json: not valid JSON .*line 1"):
        load_dataset(seg)


def test_json_not_an_object(seg):
    (seg / "dataset.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"dataset\.json: must hold a JSON object"):
        load_dataset(seg)


@pytest.mark.parametrize("key", ["channel_names", "labels", "numTraining", "file_ending"])
def test_missing_key(seg, key):
    meta = _meta(seg)
    del meta[key]
    (seg / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=rf"dataset\.json: missing key\(s\) {key}"):
        load_dataset(seg)


def test_duplicate_json_key(seg):
    (seg / "dataset.json").write_text(
        '{"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "liver": 2},'
        ' "numTraining": 3, "file_ending": ".nii.gz"}')
    with pytest.raises(DataError, match=r"dataset\.json: duplicate key 'liver'"):
        load_dataset(seg)


@pytest.mark.parametrize("channel_names, msg", [
    ({}, "channel_names must be a non-empty object"),
    (["CT"], "channel_names must be a non-empty object"),
    ({"0": 1}, r"channel_names\['0'\] must be a string"),
    ({"CT": "CT"}, "not a channel index"),
    ({"1": "CT"}, "without gaps"),
    ({"0": "T2", "2": "ADC"}, "without gaps"),
])
def test_bad_channel_names(seg, channel_names, msg):
    _set_meta(seg, channel_names=channel_names)
    with pytest.raises(DataError, match=r"dataset\.json: .*" + msg):
        load_dataset(seg)


@pytest.mark.parametrize("labels, msg", [
    ({}, "labels must be a non-empty object"),
    ([0, 1], "labels must be a non-empty object"),
    ({"background": 0, "liver": "1"}, r"labels\['liver'\] must be an integer"),
    ({"background": 0, "liver": 1.0}, r"labels\['liver'\] must be an integer"),
    ({"background": 0, "liver": True}, r"labels\['liver'\] must be an integer"),
    ({"background": 0, "liver": [1, 2]}, "region-based labels are not supported"),
    ({"background": 1, "liver": 0}, r"labels\['background'\] must be 0"),
    ({"background": 0, "liver": 1, "lesion": 1}, r"distinct integers; \[1\] used twice"),
    ({"bg": 3, "liver": 1, "lesion": 2}, "background as 0"),
    ({"background": 0, "liver": 1, "lesion": 4}, "consecutive"),
])
def test_bad_labels(seg, labels, msg):
    _set_meta(seg, labels=labels)
    with pytest.raises(DataError, match=r"dataset\.json: .*" + msg):
        load_dataset(seg)


@pytest.mark.parametrize("value, msg", [
    (None, "file_ending must be a string"),
    (3, "file_ending must be a string"),
    (".png", "file_ending '.png' is not supported"),
])
def test_bad_file_ending(seg, value, msg):
    _set_meta(seg, file_ending=value)
    with pytest.raises(DataError, match=r"dataset\.json: .*" + msg):
        load_dataset(seg)


@pytest.mark.parametrize("value", ["3", 3.0, -1, True, None])
def test_bad_num_training_type(seg, value):
    _set_meta(seg, numTraining=value)
    with pytest.raises(DataError, match=r"dataset\.json: numTraining must be a non-negative integer"):
        load_dataset(seg)


def test_num_training_disagrees(seg):
    _set_meta(seg, numTraining=5)
    with pytest.raises(DataError, match=r"dataset\.json: numTraining is 5 but imagesTr holds 3 cases"):
        load_dataset(seg)


# ----------------------------------------------------------------------------------- the files

def test_missing_images_folder(seg):
    shutil.rmtree(seg / "imagesTr")
    with pytest.raises(DataError, match="imagesTr: imagesTr folder not found"):
        load_dataset(seg)


def test_no_images(seg):
    for p in (seg / "imagesTr").iterdir():
        p.unlink()
    with pytest.raises(DataError, match=r"imagesTr: no image files ending in '\.nii\.gz'"):
        load_dataset(seg)


def test_missing_labels_folder(seg):
    shutil.rmtree(seg / "labelsTr")
    with pytest.raises(DataError, match="labelsTr folder not found"):
        load_dataset(seg)


def test_image_without_label(seg):
    (seg / "labelsTr" / "case_001.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case 'case_001': no label .*labelsTr/case_001\.nii\.gz"):
        load_dataset(seg)


def test_label_without_image(seg):
    write_nifti(seg / "labelsTr" / "case_999.nii.gz", label_array((20, 18, 6)))
    with pytest.raises(DataError, match=r"case_999\.nii\.gz: label of case 'case_999' has no image"):
        load_dataset(seg)


def test_label_with_channel_suffix(seg):
    shutil.move(seg / "labelsTr" / "case_000.nii.gz", seg / "labelsTr" / "case_000_0000.nii.gz")
    with pytest.raises(DataError, match=r"case_000_0000\.nii\.gz: label .* no channel suffix"):
        load_dataset(seg)


def test_undeclared_channel(seg):
    write_nifti(seg / "imagesTr" / "case_001_0001.nii.gz", image_array((20, 18, 6)))
    with pytest.raises(DataError, match=r"case_001_0001\.nii\.gz: case 'case_001' has channel 0001 but "
                                        r"dataset\.json declares only channel\(s\) 0000"):
        load_dataset(seg)


def test_missing_channel_suffix(seg):
    shutil.move(seg / "imagesTr" / "case_002_0000.nii.gz", seg / "imagesTr" / "case_002.nii.gz")
    with pytest.raises(DataError, match=r"case_002\.nii\.gz: image name must end in a 4-digit channel suffix"):
        load_dataset(seg)


def test_three_digit_channel_suffix(seg):
    shutil.move(seg / "imagesTr" / "case_002_0000.nii.gz", seg / "imagesTr" / "case_002_000.nii.gz")
    with pytest.raises(DataError, match=r"case_002_000\.nii\.gz: image name must end in a 4-digit"):
        load_dataset(seg)


def test_missing_channel_file(tmp_path):
    root = make_seg_dataset(tmp_path / "mr", cases=2, channels=("T2", "ADC"))
    (root / "imagesTr" / "case_001_0001.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case 'case_001': missing channel file\(s\) case_001_0001\.nii\.gz"):
        load_dataset(root)


def test_wrong_nifti_ending(seg):
    write_nifti(seg / "imagesTr" / "case_003_0000.nii", image_array((20, 18, 6)))
    with pytest.raises(DataError, match=r"case_003_0000\.nii: file ending does not match .*'\.nii\.gz'"):
        load_dataset(seg)


def test_duplicate_case_names_differing_in_case(seg):
    for src, dst in [("imagesTr/case_000_0000.nii.gz", "imagesTr/CASE_000_0000.nii.gz"),
                     ("labelsTr/case_000.nii.gz", "labelsTr/CASE_000.nii.gz")]:
        shutil.copy(seg / src, seg / dst)
    _set_meta(seg, numTraining=4)
    with pytest.raises(DataError, match=r"imagesTr: duplicate case names \['CASE_000', 'case_000'\]"):
        load_dataset(seg)


def test_image_symlink_escaping_root(seg, tmp_path):
    outside = write_nifti(tmp_path / "outside.nii.gz", image_array((20, 18, 6)))
    target = seg / "imagesTr" / "case_000_0000.nii.gz"
    target.unlink()
    os.symlink(outside, target)
    with pytest.raises(DataError, match=r"case_000_0000\.nii\.gz: resolves to .*outside\.nii\.gz, outside the data set"):
        load_dataset(seg)


def test_label_symlink_with_dotdot_escaping_root(seg, tmp_path):
    write_nifti(tmp_path / "evil.nii.gz", label_array((20, 18, 6)))
    target = seg / "labelsTr" / "case_001.nii.gz"
    target.unlink()
    os.symlink(Path("..") / ".." / "evil.nii.gz", target)  # relative link climbing out with ..
    with pytest.raises(DataError, match=r"case_001\.nii\.gz: resolves to .*evil\.nii\.gz, outside"):
        load_dataset(seg)


def test_images_folder_symlink_escaping_root(seg, tmp_path):
    shutil.move(seg / "imagesTr", tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", seg / "imagesTr")
    with pytest.raises(DataError, match=r"imagesTr: resolves to .*elsewhere, outside the data set"):
        load_dataset(seg)


def test_dataset_json_symlink_escaping_root(seg, tmp_path):
    shutil.move(seg / "dataset.json", tmp_path / "meta.json")
    os.symlink(tmp_path / "meta.json", seg / "dataset.json")
    with pytest.raises(DataError, match=r"dataset\.json: resolves to .*meta\.json, outside"):
        load_dataset(seg)


# ---------------------------------------------------------------------------------------- boxes

@pytest.mark.parametrize("box, msg", [
    ([1, 2, 3, 4, 5], "6 integers"),
    ([1, 2, 3, 4, 5, 6, 7], "6 integers"),
    ([1, 2, 0, 4, 5.5, 3], "integers only"),
    ([1, 2, 0, 4, 5.0, 3], "integers only"),
    ([1, 2, 0, "4", 5, 3], "integers only"),
    ([1, 2, 0, 4, False, 3], "integers only"),
    ([1, -2, 0, 4, 5, 3], "negative"),
    ([4, 2, 0, 1, 5, 3], r"inverted on x \(x1=1 < x0=4\)"),
    ([1, 5, 0, 4, 2, 3], "inverted on y"),
    ({"x0": 1}, "must be a list of 6 integers"),
])
def test_malformed_box(det, box, msg):
    boxes = json.loads((det / "boxesTr.json").read_text())
    boxes["case_001"] = [[1, 2, 0, 4, 5, 3], box]
    _set_boxes(det, boxes)
    with pytest.raises(DataError, match=r"boxesTr\.json: case 'case_001'.*(box 1 )?.*" + msg):
        load_dataset(det)


def test_boxes_not_a_list(det):
    _set_boxes(det, {"case_000": [], "case_001": "none", "case_002": []})
    with pytest.raises(DataError, match=r"boxesTr\.json: case 'case_001': boxes must be a list"):
        load_dataset(det)


def test_boxes_file_not_an_object(det):
    _set_boxes(det, [[1, 2, 0, 4, 5, 3]])
    with pytest.raises(DataError, match=r"boxesTr\.json: must hold an object"):
        load_dataset(det)


def test_boxes_bad_json(det):
    (det / "boxesTr.json").write_text("{'case_000': []}")
    with pytest.raises(DataError, match=r"boxesTr\.json: not valid JSON"):
        load_dataset(det)


def test_boxes_for_unknown_case(det):
    boxes = json.loads((det / "boxesTr.json").read_text())
    boxes["case_777"] = []
    _set_boxes(det, boxes)
    with pytest.raises(DataError, match=r"boxesTr\.json: boxes for unknown case 'case_777'"):
        load_dataset(det)


def test_boxes_duplicate_case(det):
    (det / "boxesTr.json").write_text('{"case_000": [], "case_001": [], "case_002": [], "case_001": []}')
    with pytest.raises(DataError, match=r"boxesTr\.json: duplicate key 'case_001'"):
        load_dataset(det)


def test_case_missing_from_boxes(det):
    _set_boxes(det, {"case_000": [], "case_002": []})
    with pytest.raises(DataError, match=r"boxesTr\.json: no entry for case\(s\) \['case_001'\] .*\[\] for a negative"):
        load_dataset(det)


def test_det_label_without_image(tmp_path):
    root = make_det_dataset(tmp_path / "d", with_labels=True)
    write_nifti(root / "labelsTr" / "ghost.nii.gz", label_array((24, 20, 5), 2))
    with pytest.raises(DataError, match=r"ghost\.nii\.gz: label of case 'ghost' has no image"):
        load_dataset(root)


# ---------------------------------------------------------------------------------------- verify

def test_verify_clean_seg(seg):
    rep = verify_dataset(seg, progress=False)
    assert isinstance(rep, VerifyReport)
    assert rep.ok, rep.text()
    assert rep.cases == 3 and rep.problems == []
    s = rep.summary
    assert s["task"] == "seg" and s["modality"] == "CT"
    assert s["spacing_min"] == pytest.approx([0.8, 0.8, 3.0]) and s["spacing_max"] == pytest.approx([0.8, 0.8, 3.0])
    assert s["shape_min"] == [20, 18, 6] and s["shape_max"] == [20, 18, 6]
    assert s["thick_file_axis_counts"] == {2: 3}
    lab = label_array((20, 18, 6), 3)
    assert s["label_voxels"] == {name: 3 * int((lab == v).sum())
                                 for v, name in enumerate(["background", "liver", "lesion"])}
    assert "no problems" in rep.text() and "3 cases" in rep.text()


def test_verify_summary_counts_thick_axes(tmp_path):
    root = make_seg_dataset(tmp_path / "d", cases=2, shape=(6, 20, 18), spacing=(3.0, 0.8, 0.8))
    rep = verify_dataset(root, progress=False)
    assert rep.ok, rep.text()
    assert rep.summary["thick_file_axis_counts"] == {0: 2}
    assert rep.summary["shape_min"] == [20, 18, 6]  # network orientation


def test_verify_clean_det(det):
    rep = verify_dataset(det, progress=False)
    assert rep.ok, rep.text()
    assert rep.summary["boxes"] == 3 and rep.summary["negative_cases"] == 1
    assert "label_voxels" not in rep.summary


def test_verify_reports_load_failure_as_one_problem(seg):
    _set_meta(seg, numTraining=7)
    rep = verify_dataset(seg, progress=False)
    assert not rep.ok and rep.cases == 0
    assert len(rep.problems) == 1 and "numTraining is 7" in rep.problems[0]
    assert "numTraining is 7" in rep.text()


def test_verify_collects_all_problems(tmp_path):
    root = make_seg_dataset(tmp_path / "d", cases=6)
    sp = (0.8, 0.8, 3.0)
    # case_000: NaN voxel in the image
    bad = image_array((20, 18, 6))
    bad[3, 3, 3] = np.nan
    write_nifti(root / "imagesTr" / "case_000_0000.nii.gz", bad, sp)
    # case_001: label shape differs from the image
    write_nifti(root / "labelsTr" / "case_001.nii.gz", label_array((20, 18, 5)), sp)
    # case_002: same shape, shifted affine
    aff = np.diag([*sp, 1.0])
    aff[0, 3] = 0.5
    write_nifti(root / "labelsTr" / "case_002.nii.gz", label_array((20, 18, 6)), sp, affine=aff)
    # case_003: label value 7 is not declared
    lab = label_array((20, 18, 6))
    lab[0, 0, 0] = 7
    write_nifti(root / "labelsTr" / "case_003.nii.gz", lab, sp)
    # case_004: float label, although its values are integral
    write_nifti(root / "labelsTr" / "case_004.nii.gz", label_array((20, 18, 6)).astype(np.float32), sp)
    # case_005: non-integer label values
    fl = label_array((20, 18, 6)).astype(np.float32)
    fl[1, 1, 1] = 0.25
    write_nifti(root / "labelsTr" / "case_005.nii.gz", fl, sp)

    rep = verify_dataset(root, progress=False)
    assert not rep.ok and rep.cases == 6
    text = rep.text()
    by_case = {c: [p for p in rep.problems if f"case '{c}'" in p] for c in case_names(6)}
    assert len(rep.problems) == 6, text
    assert "case_000_0000.nii.gz: image has 1 NaN or Inf voxels" in by_case["case_000"][0]
    assert "label shape (20, 18, 5) differs from the image shape (20, 18, 6)" in by_case["case_001"][0]
    assert "label affine differs from the image affine (max difference 0.5" in by_case["case_002"][0]
    assert "label values [7] are not in dataset.json's labels [0, 1, 2]" in by_case["case_003"][0]
    assert "label stored as float (float32)" in by_case["case_004"][0]
    assert "non-integer voxel values (e.g. 0.25)" in by_case["case_005"][0]
    for p in rep.problems:
        assert p in text
    assert rep.summary["label_voxels"]["7"] == 1  # undeclared values are counted under their number


def test_verify_affine_tolerance(seg):
    sp = (0.8, 0.8, 3.0)
    aff = np.diag([*sp, 1.0])
    aff[1, 3] = 5e-5  # below the 1e-4 tolerance: not a problem
    write_nifti(seg / "labelsTr" / "case_000.nii.gz", label_array((20, 18, 6)), sp, affine=aff)
    assert verify_dataset(seg, progress=False).ok
    aff[1, 3] = 3e-4
    write_nifti(seg / "labelsTr" / "case_000.nii.gz", label_array((20, 18, 6)), sp, affine=aff)
    rep = verify_dataset(seg, progress=False)
    assert len(rep.problems) == 1 and "affine differs" in rep.problems[0]


def test_verify_label_spacing_differs(seg):
    """Same affine and shape but another voxel size in the header would reorient the label
    differently from its image."""
    write_nifti(seg / "labelsTr" / "case_002.nii.gz", label_array((20, 18, 6)), (3.0, 0.8, 0.8),
                affine=np.diag([0.8, 0.8, 3.0, 1.0]))
    rep = verify_dataset(seg, progress=False)
    assert len(rep.problems) == 1 and "case 'case_002': label voxel size" in rep.problems[0]


def test_verify_channels_with_different_shapes(tmp_path):
    root = make_seg_dataset(tmp_path / "mr", cases=2, channels=("T2", "ADC"))
    write_nifti(root / "imagesTr" / "case_001_0001.nii.gz", image_array((20, 17, 6)), (0.8, 0.8, 3.0))
    rep = verify_dataset(root, progress=False)
    assert len(rep.problems) == 1
    assert "case 'case_001': channel 0001 shape (20, 17, 6) differs from the channel 0000 shape" in rep.problems[0]


def test_verify_unreadable_and_not_3d_files(seg):
    (seg / "imagesTr" / "case_000_0000.nii.gz").write_bytes(b"garbage" * 50)
    write_nifti(seg / "labelsTr" / "case_001.nii.gz", np.zeros((20, 18), np.uint8), (0.8, 0.8))
    (seg / "labelsTr" / "case_002.nii.gz").write_bytes(b"")
    rep = verify_dataset(seg, progress=False)
    assert len(rep.problems) == 3, rep.text()
    assert "case 'case_000'" in rep.problems[0] and "not a readable NIfTI" in rep.problems[0]
    assert "case 'case_001'" in rep.problems[1] and "volume must be 3D, got 2D" in rep.problems[1]
    assert "case 'case_002'" in rep.problems[2] and "empty file" in rep.problems[2]


def test_verify_scaled_label(tmp_path):
    root = make_seg_dataset(tmp_path / "d", cases=2, file_ending=".nii")
    p = write_nifti(root / "labelsTr" / "case_000.nii", label_array((20, 18, 6)), (0.8, 0.8, 3.0), dtype=np.int16)
    patch_header_float(p, SCL_SLOPE_OFFSET, 1.0)  # identity scaling is fine ...
    assert verify_dataset(root, progress=False).ok
    patch_header_float(p, SCL_SLOPE_OFFSET, 2.0)  # ... a real one is not (values become 0, 2, 4)
    rep = verify_dataset(root, progress=False)
    assert any("intensity scaling (scl_slope=2.0" in q for q in rep.problems), rep.text()
    assert any("label values [4] are not in" in q for q in rep.problems), rep.text()


def test_verify_boxes_outside_volume(det):
    _set_boxes(det, {"case_000": [], "case_001": [[1, 2, 0, 23, 19, 4]],
                     "case_002": [[1, 2, 0, 24, 5, 3], [0, 0, 0, 1, 1, 5]]})
    rep = verify_dataset(det, progress=False)
    assert len(rep.problems) == 2, rep.text()
    assert all("case 'case_002'" in p and "outside the volume (file shape (24, 20, 5)" in p for p in rep.problems)
    assert "box 0 [1, 2, 0, 24, 5, 3]" in rep.problems[0] and "box 1 [0, 0, 0, 1, 1, 5]" in rep.problems[1]


def test_verify_progress_bar(seg, capsys, monkeypatch):
    assert verify_dataset(seg, progress=True).ok
    assert "verify" not in capsys.readouterr().err  # bars on terminals only
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert verify_dataset(seg, progress=True).ok
    assert "verify" in capsys.readouterr().err


# --------------------------------------------------------------------------------- real volume

def test_verify_real_totalseg_case(tmp_path):
    """A data set made of the real TotalSegmentator example (image + model-output label)."""
    src = REAL / "totalseg_example"
    if not (src / "example_ct_sm.nii.gz").exists():
        pytest.skip(f"real data not present: {src}")
    root = tmp_path / "real"
    write_dataset_json(root, {"0": "CT"}, {"background": 0, **{f"c{i}": i for i in range(1, 120)}}, 1)
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    shutil.copy(src / "example_ct_sm.nii.gz", root / "imagesTr" / "ts_0000.nii.gz")
    shutil.copy(src / "example_seg.nii.gz", root / "labelsTr" / "ts.nii.gz")
    rep = verify_dataset(root, progress=False)
    assert rep.ok, rep.text()
    assert rep.summary["shape_min"] == [122, 101, 30]
    assert rep.summary["spacing_min"] == pytest.approx([3.0, 3.0, 3.0])
    assert rep.summary["label_voxels"]["c5"] == 38_634  # liver voxel count given by the data's README


def test_dataset_json_with_byte_order_mark(seg):
    """Editors on Windows often save JSON with a UTF-8 byte-order mark; it is not an error."""
    text = (seg / "dataset.json").read_text()
    (seg / "dataset.json").write_bytes("\ufeff".encode() + text.encode())
    assert load_dataset(seg).modality == "CT"
