"""ahnet.evaluation.segmentation: Dice Global and Dice per Case (§4.2, Table 5), checked against MONAI's
DiceMetric as an independent reference, on hand-worked values, NIfTI folders and a real CHAOS pair."""

import csv
import gc
import gzip
import json
import math
import sys
import weakref
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from datasets import write_nifti
from monai.metrics import DiceMetric

from ahnet.errors import ConfigError, DataError
from ahnet.evaluation import (LITS_CLASSES, SegmentationResult, classes_from_labels, dice, evaluate_arrays,
                              evaluate_segmentation)

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
CHAOS_PRED = REAL / "chaos_ct" / "chaos_ct_sample_example_submission.nii.gz"
CHAOS_GT = REAL / "chaos_ct" / "chaos_ct_sample_liver_gt.nii.gz"


# ------------------------------------------------------------------------------- MONAI reference

def _one_hot(labels: np.ndarray, classes, background: bool = False) -> torch.Tensor:
    """(1, C, ...) one-hot of the class masks; with ``background`` a channel 0 = no class first."""
    chans = [np.isin(labels, v) for v in classes.values()]
    if background:
        chans.insert(0, ~np.any(chans, axis=0))
    return torch.from_numpy(np.stack(chans)[None].astype(np.float32))


def _monai_per_case(pred, truth, classes, ignore_empty: bool, background: bool = False) -> np.ndarray:
    """MONAI's per-case, per-class Dice; with a background channel it must be dropped explicitly."""
    metric = DiceMetric(include_background=not background, reduction="none", ignore_empty=ignore_empty)
    out = metric(_one_hot(pred, classes, background), _one_hot(truth, classes, background))
    return out[0].double().numpy()


def _random_cases(n=6, shape=(12, 10, 6), seed=0):
    """LiTS-like label maps: liver blobs with some lesion, the prediction a noisy copy; some cases
    have no lesion in the truth, some none in the prediction, one neither."""
    rng = np.random.default_rng(seed)
    cases = []
    for k in range(n):
        truth = (rng.random(shape) < 0.4).astype(np.uint8)
        truth[(truth == 1) & (rng.random(shape) < 0.3)] = 2
        pred = truth.copy()
        flip = rng.random(shape) < 0.15
        pred[flip] = rng.integers(0, 3, size=int(flip.sum()))
        if k == 1:
            truth[truth == 2] = 1  # no lesion in truth, some predicted
        if k == 2:
            pred[pred == 2] = 1  # lesion missed completely
        if k == 3:
            truth[truth == 2] = 1
            pred[pred == 2] = 1  # lesion-free and none predicted
        cases.append((f"case_{k:03d}", pred, truth))
    return cases


def test_matches_monai_without_ignore_empty():
    """MONAI's ignore_empty=False uses the same empty conventions as ours: equal everywhere."""
    cases = _random_cases()
    res = evaluate_arrays(cases, LITS_CLASSES)
    for case, pred, truth in cases:
        ref = _monai_per_case(pred, truth, LITS_CLASSES, ignore_empty=False)
        ours = np.array([res.cases[case][c] for c in LITS_CLASSES])
        np.testing.assert_allclose(ours, ref, atol=1e-6, err_msg=case)
    # DPC is the plain mean of those per-case values
    for i, c in enumerate(LITS_CLASSES):
        ref_mean = np.mean([_monai_per_case(p, t, LITS_CLASSES, False)[i] for _, p, t in cases])
        assert res.dice_per_case[c] == pytest.approx(ref_mean, abs=1e-6)


def test_matches_monai_ignore_empty_where_defined():
    """MONAI's default ignore_empty=True gives NaN when the truth is empty; elsewhere it agrees."""
    cases = _random_cases(seed=1)
    res = evaluate_arrays(cases, LITS_CLASSES)
    n_nan = 0
    for case, pred, truth in cases:
        ref = _monai_per_case(pred, truth, LITS_CLASSES, ignore_empty=True)
        for i, c in enumerate(LITS_CLASSES):
            truth_empty = not np.isin(truth, LITS_CLASSES[c]).any()
            assert math.isnan(ref[i]) == truth_empty
            if truth_empty:
                n_nan += 1
                pred_empty = not np.isin(pred, LITS_CLASSES[c]).any()
                assert res.cases[case][c] == (1.0 if pred_empty else 0.0)
            else:
                assert res.cases[case][c] == pytest.approx(ref[i], abs=1e-6)
    assert n_nan == 2  # cases 1 and 3 have no lesion in the truth


def test_matches_monai_with_background_channel_excluded():
    cases = _random_cases(n=3, seed=2)
    res = evaluate_arrays(cases, LITS_CLASSES)
    for case, pred, truth in cases:
        ref = _monai_per_case(pred, truth, LITS_CLASSES, ignore_empty=False, background=True)
        assert ref.shape == (2,)  # include_background=False dropped channel 0
        np.testing.assert_allclose([res.cases[case][c] for c in LITS_CLASSES], ref, atol=1e-6)


# ------------------------------------------------------------------------------------ dice()

def _mask(idx, shape=(4, 4, 2)):
    m = np.zeros(shape, dtype=bool)
    m.flat[list(idx)] = True
    return m


@pytest.mark.parametrize("pred_idx, truth_idx, expected", [
    ([], [1, 2, 3], 0.0),            # empty prediction
    ([1, 2, 3], [], 0.0),            # empty truth
    ([], [], 1.0),                   # both empty: 1 by convention
    ([0, 5, 9, 31], [0, 5, 9, 31], 1.0),  # identical
    ([0, 1], [2, 3, 4], 0.0),        # disjoint
    ([0, 1, 2], [1, 2, 3, 4, 5], 2 * 2 / 8),
])
def test_dice_edge_cases(pred_idx, truth_idx, expected):
    p, t = _mask(pred_idx), _mask(truth_idx)
    assert dice(p, t) == expected
    assert dice(p.astype(np.uint8), t.astype(np.float32)) == expected
    ref = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(
        torch.from_numpy(p[None, None].astype(np.float32)), torch.from_numpy(t[None, None].astype(np.float32)))
    assert float(ref) == pytest.approx(expected, abs=1e-7)


def test_dice_refuses_label_maps_and_shape_mismatch():
    with pytest.raises(DataError, match="binary mask"):
        dice(np.array([0, 1, 2]), np.array([0, 1, 1]))
    with pytest.raises(DataError, match="shape"):
        dice(np.zeros((2, 3)), np.zeros((3, 2)))


# ----------------------------------------------------------------------------- DG versus DPC

def test_dice_global_and_per_case_differ_hand_worked():
    """Case a: |A|=|B|=8, overlap 6 -> 12/16 = 0.75. Case b: |A|=|B|=2, overlap 0 -> 0.
    DPC = (0.75 + 0) / 2 = 0.375; DG = 2*6 / (10 + 10) = 0.6 (the big case weighs more)."""
    ta = np.zeros(16, np.uint8); ta[0:8] = 1
    pa = np.zeros(16, np.uint8); pa[2:10] = 1
    tb = np.zeros(16, np.uint8); tb[0:2] = 1
    pb = np.zeros(16, np.uint8); pb[4:6] = 1
    res = evaluate_arrays([("a", pa, ta), ("b", pb, tb)], {"fg": (1,)}, surface_tolerance_mm=None)
    assert res.cases == {"a": {"fg": 0.75}, "b": {"fg": 0.0}}
    assert res.dice_per_case == {"fg": 0.375}
    assert res.dice_global == {"fg": 0.6}
    assert res.to_dict() == {"dice_global": {"fg": 0.6}, "dice_per_case": {"fg": 0.375},
                             "cases": {"a": {"fg": 0.75}, "b": {"fg": 0.0}},
                             "counts": {"a": {"fg": {"tp": 6, "fp": 2, "fn": 2}}, "b": {"fg": {"tp": 0, "fp": 2, "fn": 2}}}}


def test_lits_convention_lesion_predicted_as_liver():
    """A lesion voxel predicted as liver is right for liver (label >= 1) and a miss for lesion."""
    truth = np.array([0, 1, 2, 2])
    pred = np.array([0, 1, 1, 2])
    res = evaluate_arrays([("c", pred, truth)])
    assert res.cases["c"] == {"liver": 1.0, "lesion": 2 * 1 / 3}


def test_class_absent_from_both_and_custom_classes():
    truth = np.array([[0, 1], [2, 2]])
    res = evaluate_arrays([("x", truth, truth), ("y", truth * 0, truth * 0)],
                          {"other": (7,), "lesion": 2})
    assert res.cases == {"x": {"other": 1.0, "lesion": 1.0}, "y": {"other": 1.0, "lesion": 1.0}}
    assert res.dice_global == {"other": 1.0, "lesion": 1.0}


def test_evaluate_arrays_is_lazy_and_keeps_no_arrays():
    """Cases are consumed one at a time and dropped: memory stays flat over a long generator."""
    refs = []

    def gen():
        for k in range(4):
            if refs:
                gc.collect()
                assert all(r() is None for r in refs), "a previous case is still held"
            t = np.zeros((5, 5), np.int64)
            t[:2] = 1
            refs.append(weakref.ref(t))
            yield f"c{k}", t.copy(), t
            del t

    res = evaluate_arrays(gen(), {"fg": (1,)})
    assert len(res.cases) == 4


@pytest.mark.parametrize("pairs, match", [
    ([], "no cases"),
    ([("a", np.zeros((2, 2)), np.zeros((2, 3)))], "'a'.*shape"),
    ([("a", np.array([0.0, 0.5]), np.array([0, 1]))], "'a'.*non-integer"),
    ([("a", np.zeros(2), np.zeros(2)), ("a", np.zeros(2), np.zeros(2))], "'a'.*twice"),
])
def test_evaluate_arrays_errors(pairs, match):
    with pytest.raises(DataError, match=match):
        evaluate_arrays(pairs)


@pytest.mark.parametrize("classes", [{}, {"liver": ()}, {"liver": (1.5,)}, {"liver": "1"}, {"case": (1,)},
                                     {"": (1,)}, {"liver": (True,)}])
def test_bad_classes(classes):
    with pytest.raises(ConfigError):
        evaluate_arrays([("a", np.zeros(2), np.zeros(2))], classes)


def test_classes_from_labels():
    assert classes_from_labels({"background": 0, "liver": 1, "spleen": 2}) == {"liver": (1,), "spleen": (2,)}
    assert classes_from_labels({"0": "background", "1": "liver"}) == {"liver": (1,)}  # nnU-Net v1
    assert classes_from_labels({"background": 0, "whole": [1, 2], "core": [2]}) == {"whole": (1, 2),
                                                                                     "core": (2,)}
    for bad in ({"background": 0}, {"a": 1, "b": 1}, {"a": 1.5}, {}):
        with pytest.raises(ConfigError):
            classes_from_labels(bad)


# ------------------------------------------------------------------------------------- folders

SHAPE = (6, 5, 4)


def _write_case(folder, case, labels, ext=".nii.gz", **kw):
    return write_nifti(Path(folder) / f"{case}{ext}", labels, spacing=(0.8, 0.8, 2.5), dtype=np.uint8, **kw)


def _with_spacing(cases, spacing=(0.8, 0.8, 2.5)):
    """The cases as _write_case stores them: HD95 and surface Dice are in mm of that voxel size."""
    return [(case, pred, truth, spacing) for case, pred, truth in cases]


def _folders(tmp_path, n=3, seed=0):
    cases = _random_cases(n=n, shape=SHAPE, seed=seed)
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    for case, pred, truth in cases:
        _write_case(pred_dir, case, pred, ext=".nii" if case.endswith("1") else ".nii.gz")
        _write_case(gt_dir, case, truth)
    (pred_dir / "plans.json").write_text("{}")  # nnU-Net leaves other files in its output folder
    (gt_dir / "dataset.json").write_text("{}")
    return cases, pred_dir, gt_dir


def test_folder_evaluation_json_and_csv(tmp_path, capsys):
    cases, pred_dir, gt_dir = _folders(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("old")  # replaced atomically
    res = evaluate_segmentation(pred_dir, gt_dir, json_out=out / "metrics.json", csv_out=out / "cases.csv",
                                progress=False, classes=LITS_CLASSES)
    assert capsys.readouterr().err == ""  # progress=False: no bar
    ref = evaluate_arrays(_with_spacing(cases))
    assert isinstance(res, SegmentationResult)
    assert res.to_dict() == ref.to_dict()

    data = json.loads((out / "metrics.json").read_text())
    assert list(data) == ["dice_global", "dice_per_case", "cases", "counts", "surface", "surface_tolerance_mm"]
    assert data == ref.to_dict()
    assert list(data["cases"]) == ["case_000", "case_001", "case_002"]
    assert set(data["dice_global"]) == {"liver", "lesion"}

    rows = list(csv.reader((out / "cases.csv").open(newline="")))
    assert rows[0] == ["case", "liver", "lesion"]
    assert [r[0] for r in rows[1:]] == ["case_000", "case_001", "case_002"]
    for r in rows[1:]:
        assert [float(x) for x in r[1:]] == [ref.cases[r[0]]["liver"], ref.cases[r[0]]["lesion"]]
    assert sorted(p.name for p in out.iterdir()) == ["cases.csv", "metrics.json"]  # no temp files left


def test_folder_progress_bar_and_classes(tmp_path, capsys, monkeypatch):
    cases, pred_dir, gt_dir = _folders(tmp_path, n=2)
    evaluate_segmentation(pred_dir, gt_dir, classes="lits")
    assert capsys.readouterr().err == ""  # no terminal, no bar (a log file gets none)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    res = evaluate_segmentation(pred_dir, gt_dir, classes={"lesion": (2,), "none": (9,)},
                                csv_out=tmp_path / "new" / "c.csv")
    assert "Dice" in capsys.readouterr().err
    assert all(d["none"] == 1.0 for d in res.cases.values())
    assert (tmp_path / "new" / "c.csv").read_text().splitlines()[0] == "case,lesion,none"


def test_affine_within_tolerance_is_accepted(tmp_path):
    cases, pred_dir, gt_dir = _folders(tmp_path, n=1)
    aff = np.diag([0.8, 0.8, 2.5, 1.0])
    aff[0, 3] = 5e-4
    _write_case(pred_dir, "case_000", cases[0][1], affine=aff)
    evaluate_segmentation(pred_dir, gt_dir, progress=False, classes=LITS_CLASSES)


def test_missing_cases_are_listed(tmp_path):
    cases, pred_dir, gt_dir = _folders(tmp_path)
    (pred_dir / "case_002.nii.gz").unlink()
    _write_case(pred_dir, "case_099", cases[0][1])
    with pytest.raises(DataError, match=r"1 case\(s\) in ground truth .* but not in predictions .*: case_002"
                                        r"(.|\n)*1 case\(s\) in predictions .* but not in ground truth .*case_099"):
        evaluate_segmentation(pred_dir, gt_dir, progress=False, classes=LITS_CLASSES)


def test_missing_cases_at_most_ten_listed(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    lab = np.zeros(SHAPE, np.uint8)
    _write_case(pred_dir, "case_000", lab)
    for k in range(13):
        _write_case(gt_dir, f"case_{k:03d}", lab)
    with pytest.raises(DataError, match=r"12 case\(s\).*case_001, .*case_010, \.\.\. \(2 more\)") as ei:
        evaluate_segmentation(pred_dir, gt_dir, progress=False, classes=LITS_CLASSES)
    assert "case_011" not in str(ei.value)


def test_image_folder_hint(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    lab = np.zeros(SHAPE, np.uint8)
    _write_case(pred_dir, "case_000", lab)
    _write_case(gt_dir, "case_000_0000", lab)
    with pytest.raises(DataError, match="case_000_0000.*labels folder"):
        evaluate_segmentation(pred_dir, gt_dir, progress=False, classes=LITS_CLASSES)


def test_shape_mismatch(tmp_path):
    cases, pred_dir, gt_dir = _folders(tmp_path)
    (pred_dir / "case_001.nii").unlink()
    _write_case(pred_dir, "case_001", np.zeros((6, 5, 3), np.uint8))
    with pytest.raises(DataError, match=r"case 'case_001'.*shape \(6, 5, 3\).*shape \(6, 5, 4\)"):
        evaluate_segmentation(pred_dir, gt_dir, progress=False, classes=LITS_CLASSES)


def test_affine_mismatch(tmp_path):
    cases, pred_dir, gt_dir = _folders(tmp_path)
    aff = np.diag([0.8, 0.8, 2.5, 1.0])
    aff[2, 3] = 0.01
    _write_case(pred_dir, "case_002", cases[2][1], affine=aff)
    with pytest.raises(DataError, match="case 'case_002'.*different affines"):
        evaluate_segmentation(pred_dir, gt_dir, progress=False, classes=LITS_CLASSES)


def test_non_integer_labels(tmp_path):
    cases, pred_dir, gt_dir = _folders(tmp_path)
    soft = cases[0][1].astype(np.float32)
    soft[0, 0, 0] = 0.5
    write_nifti(pred_dir / "case_000.nii.gz", soft, spacing=(0.8, 0.8, 2.5))
    with pytest.raises(DataError, match="case 'case_000'.*prediction.*non-integer label values"):
        evaluate_segmentation(pred_dir, gt_dir, progress=False, classes=LITS_CLASSES)
    # integral floats (e.g. labels saved as float32) are fine
    write_nifti(pred_dir / "case_000.nii.gz", cases[0][1].astype(np.float32), spacing=(0.8, 0.8, 2.5))
    assert (evaluate_segmentation(pred_dir, gt_dir, progress=False, classes=LITS_CLASSES).to_dict()
            == evaluate_arrays(_with_spacing(cases)).to_dict())


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_unreadable_file(tmp_path, damage):
    cases, pred_dir, gt_dir = _folders(tmp_path)
    path = gt_dir / "case_001.nii.gz"
    if damage == "garbage":
        path.write_bytes(b"this is not a nifti file" * 20)
    elif damage == "truncated":
        raw = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(raw[: len(raw) - 40]))
    else:
        path.write_bytes(b"")
    with pytest.raises(DataError, match=r"case 'case_001': ground truth .*case_001\.nii\.gz"):
        evaluate_segmentation(pred_dir, gt_dir, progress=False, classes=LITS_CLASSES)


def test_empty_and_missing_folders(tmp_path):
    cases, pred_dir, gt_dir = _folders(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty.*no NIfTI files"):
        evaluate_segmentation(empty, gt_dir, progress=False, classes=LITS_CLASSES)
    with pytest.raises(DataError, match="empty.*no NIfTI files"):
        evaluate_segmentation(pred_dir, empty, progress=False, classes=LITS_CLASSES)
    with pytest.raises(DataError, match="nowhere.*not found"):
        evaluate_segmentation(tmp_path / "nowhere", gt_dir, progress=False, classes=LITS_CLASSES)


def test_duplicate_extensions(tmp_path):
    cases, pred_dir, gt_dir = _folders(tmp_path)
    _write_case(pred_dir, "case_000", cases[0][1], ext=".nii")
    with pytest.raises(DataError, match="case 'case_000'.*both"):
        evaluate_segmentation(pred_dir, gt_dir, progress=False, classes=LITS_CLASSES)


def test_bad_output_path_fails_before_evaluation(tmp_path):
    cases, pred_dir, gt_dir = _folders(tmp_path)
    with pytest.raises(ConfigError, match="is a folder"):
        evaluate_segmentation(pred_dir, gt_dir, json_out=tmp_path, progress=False, classes=LITS_CLASSES)


# ----------------------------------------------------------------------------------- real data

@pytest.mark.skipif(not (CHAOS_PRED.exists() and CHAOS_GT.exists()), reason="CHAOS sample not available")
def test_real_chaos_published_dice(tmp_path):
    """The CHAOS challenge publishes Dice 0.978 for this example submission against its truth."""
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred" / "chaos.nii.gz").symlink_to(CHAOS_PRED)
    (tmp_path / "gt" / "chaos.nii.gz").symlink_to(CHAOS_GT)
    liver = {"liver": (1,)}
    res = evaluate_segmentation(tmp_path / "pred", tmp_path / "gt", classes=liver, progress=False,
                                json_out=tmp_path / "m.json")
    d = res.cases["chaos"]["liver"]
    assert d == pytest.approx(0.978, abs=1e-3)
    assert res.dice_global["liver"] == res.dice_per_case["liver"] == d  # one case: DG == DPC

    pred = np.asanyarray(nib.load(str(CHAOS_PRED)).dataobj)
    truth = np.asanyarray(nib.load(str(CHAOS_GT)).dataobj)
    assert pred.shape == truth.shape == (512, 512, 78)
    ref = DiceMetric(include_background=True, reduction="none", ignore_empty=True)(
        torch.from_numpy(pred[None, None]), torch.from_numpy(truth[None, None]))
    assert d == pytest.approx(float(ref), abs=1e-6)
    assert json.loads((tmp_path / "m.json").read_text())["cases"]["chaos"]["liver"] == d


def _binary_dataset(root: Path) -> Path:
    """A binary data set (labels background/liver only) with a prediction equal to the truth."""
    (root / "labelsTr").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    truth = np.zeros((8, 8, 4), np.uint8)
    truth[2:6, 2:6, 1:3] = 1
    for folder in ("labelsTr", "pred"):
        write_nifti(root / folder / "case_000.nii.gz", truth, dtype=np.uint8)
    return root


def test_cli_scores_the_data_sets_own_classes_by_default(tmp_path, capsys):
    from ahnet.cli import main

    data = _binary_dataset(tmp_path / "Binary")
    assert main(["evaluate", "seg", "--pred", str(data / "pred"), "--gt", str(data / "labelsTr")]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["dice_global"] == {"liver": 1.0}  # no 'lesion' the data set does not have
    assert f"classes from {data / 'dataset.json'}: liver = [1]" in err
    assert main(["evaluate", "seg", "--pred", str(data / "pred"), "--gt", str(data / "labelsTr"),
                 "--classes", "lits"]) == 0
    assert set(json.loads(capsys.readouterr().out)["dice_global"]) == {"liver", "lesion"}


def test_classes_are_never_guessed(tmp_path):
    from ahnet.evaluation.segmentation import resolve_classes

    data = _binary_dataset(tmp_path / "Binary")
    assert resolve_classes(None, dataset=data) == ({"liver": (1,)}, str(data / "dataset.json"))
    assert resolve_classes("LiTS")[0] == LITS_CLASSES
    assert resolve_classes('{"organ": [1, 2]}')[0] == {"organ": (1, 2)}
    with pytest.raises(ConfigError, match=r"No dataset.json at .*elsewhere.*--dataset.*--classes lits"):
        resolve_classes(None, gt_dir=tmp_path / "elsewhere" / "labels")
    with pytest.raises(ConfigError, match="neither 'lits' nor valid JSON"):
        resolve_classes("{organ: [1]}")


def test_counts_hd95_and_surface_dice_beside_dice():
    truth = np.zeros((20, 20, 6), np.uint8)
    truth[5:15, 5:15, 1:5] = 1
    shifted = np.roll(truth, 2, axis=0)  # 2 voxels of 0.5 mm: 1 mm off
    res = evaluate_arrays([("a", shifted, truth, (0.5, 0.5, 3.0)), ("b", truth * 0, truth)], {"organ": (1,)},
                          surface_tolerance_mm=1.5)
    assert res.counts["a"]["organ"] == {"tp": 320, "fp": 80, "fn": 80}
    assert res.counts["b"]["organ"] == {"tp": 0, "fp": 0, "fn": 400}
    assert res.surface["a"]["organ"]["hd95_mm"] == pytest.approx(1.0)
    assert res.surface["a"]["organ"]["surface_dice"] == pytest.approx(1.0)  # every point within 1.5 mm
    assert res.surface["b"]["organ"] == {"hd95_mm": None, "surface_dice": None}  # undefined: nothing predicted
    strict = evaluate_arrays([("a", shifted, truth, (0.5, 0.5, 3.0))], {"organ": (1,)}, surface_tolerance_mm=0.5)
    assert strict.surface["a"]["organ"]["surface_dice"] < 1.0
    assert json.loads(json.dumps(res.to_dict()))["surface_tolerance_mm"] == 1.5
