"""NMS, FROC and the detection files of the DBT evaluation (§4.1).

FROC expectations are worked out by hand in the comments; a brute-force FROC (threshold by
threshold, detection by detection) checks the sweep on random cases.
"""

import json
import math
import os
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ahnet.errors import ConfigError, DataError
from ahnet.evaluation import (FROC_RATES, Detection, FROCResult, evaluate_detection, froc, non_max_suppression,
                              plot_froc, radius_from_mm, read_boxes_json, read_detections_csv,
                              write_detections_csv)
from ahnet.evaluation.detection import _box_max

D = Detection


def curve_approx(result):
    return [pytest.approx(p) for p in result.curve]


# ----------------------------------------------------------------------------------------- FROC


def test_froc_keys_are_table4_and_challenge_rates():
    res = froc([], {"a": [[0, 0, 0, 1, 1, 1]]})
    assert list(res.froc) == ["0.01", "0.05", "0.1", "0.15", "0.2", "0.25", "1", "2", "4"]
    assert FROC_RATES == (0.01, 0.05, 0.10, 0.15, 0.20, 0.25, 1.0, 2.0, 4.0)


def test_tied_scores_enter_together():
    # one TP in "a" and one FP in "b", same score: one threshold, one point (0.5 FP/vol, TPR 1).
    # Entering one at a time would give an extra point [0, 1] (or [0.5, 0]) and froc@0.25 = 1.
    boxes = {"a": [[0, 0, 0, 2, 2, 2]], "b": []}
    res = froc([D("a", 1, 1, 1, 0.5), D("b", 0, 0, 0, 0.5)], boxes, rates=(0.25, 0.5))
    assert res.curve == [[0.0, 0.0], [0.5, 1.0]]
    assert res.froc == {"0.25": 0.0, "0.5": 1.0}


def test_several_detections_in_one_box_find_it_once_and_are_not_false_positives():
    boxes = {"a": [[0, 0, 0, 9, 9, 9], [20, 20, 20, 25, 25, 25]]}
    dets = [D("a", 1, 1, 1, 0.9), D("a", 5, 5, 5, 0.8), D("a", 9, 9, 9, 0.7)]
    res = froc(dets, boxes)
    # every threshold: box 0 found (TPR 1/2), no FP
    assert res.curve == [[0.0, 0.0], [0.0, 0.5], [0.0, 0.5], [0.0, 0.5]]
    assert set(res.froc.values()) == {0.5}
    assert (res.lesions, res.volumes) == (2, 1)


def test_detection_in_two_overlapping_boxes_finds_both():
    boxes = {"a": [[0, 0, 0, 10, 10, 10], [5, 5, 5, 15, 15, 15], [30, 30, 30, 31, 31, 31]]}
    res = froc([D("a", 7, 8, 9, 0.4)], boxes)
    assert res.curve == [[0.0, 0.0], [0.0, pytest.approx(2 / 3)]]
    assert res.froc["0.01"] == pytest.approx(2 / 3)


def test_negative_volumes_count_in_the_fp_denominator():
    # 1 FP over 4 volumes (3 negatives) = 0.25 FP/volume, not 1.0
    boxes = {"a": [[0, 0, 0, 3, 3, 3]], "n1": [], "n2": [], "n3": []}
    res = froc([D("a", 2, 2, 2, 0.9), D("a", 50, 50, 5, 0.3)], boxes)
    assert res.curve == [[0.0, 0.0], [0.0, 1.0], [0.25, 1.0]]
    assert res.volumes == 4
    # a FP in a negative volume counts the same way
    res = froc([D("n2", 1, 1, 1, 0.7)], boxes)
    assert res.curve == [[0.0, 0.0], [0.25, 0.0]]


def test_no_detections_at_all():
    res = froc([], {"a": [[0, 0, 0, 1, 1, 1]], "b": [[2, 2, 2, 3, 3, 3], [5, 5, 5, 6, 6, 6]], "n": []})
    assert res.curve == [[0.0, 0.0]]
    assert all(v == 0.0 for v in res.froc.values()) and len(res.froc) == len(FROC_RATES)
    assert (res.lesions, res.volumes) == (3, 3)
    assert res.to_dict() == {"froc": res.froc, "lesions": 3, "volumes": 3, "curve": [[0.0, 0.0]]}


def test_only_negative_volumes_tpr_is_zero():
    res = froc([D("n1", 1, 1, 1, 0.9), D("n2", 2, 2, 2, 0.1)], {"n1": [], "n2": []})
    assert res.lesions == 0
    assert res.curve == [[0.0, 0.0], [0.5, 0.0], [1.0, 0.0]]
    assert set(res.froc.values()) == {0.0}


@pytest.mark.parametrize("point, inside", [
    ((10, 20, 30), True), ((12, 22, 32), True), ((10, 22, 30), True), ((12, 20, 32), True),  # corners
    ((11, 21, 31), True),
    ((9, 21, 31), False), ((13, 21, 31), False),   # one voxel outside on x
    ((11, 19, 31), False), ((11, 23, 31), False),  # ... on y
    ((11, 21, 29), False), ((11, 21, 33), False),  # ... on z
])
def test_box_faces_are_inclusive(point, inside):
    res = froc([D("a", *point, 0.5)], {"a": [[10, 20, 30, 12, 22, 32]]})
    assert res.curve[-1] == ([0.0, 1.0] if inside else [1.0, 0.0])


def test_detection_in_another_case_box_is_a_false_positive():
    boxes = {"a": [[0, 0, 0, 5, 5, 5]], "b": []}
    res = froc([D("b", 2, 2, 2, 0.9)], boxes)
    assert res.curve == [[0.0, 0.0], [0.5, 0.0]]


# Worked example for the read-out rule. Volumes V = 4 (a, b, n1, n2), lesions L = 3 (two in a, one in b).
#   score  detection                       TP lesions  FP   point (FP/vol, TPR)
#   0.9    a (7,7,7) in both boxes of a    2           0    (0.00, 2/3)
#   0.8    a (1,1,1) in box 0 again; n1 FP 2           1    (0.25, 2/3)   <- tie: both enter at 0.8
#   0.6    b (40,40,4) outside             2           2    (0.50, 2/3)
#   0.5    b (25,25,3) in b; n2 FP         3           3    (0.75, 1)
#   0.3    a (50,50,50) outside            3           4    (1.00, 1)
WORKED_BOXES = {"a": [[0, 0, 0, 9, 9, 9], [5, 5, 5, 14, 14, 14]], "b": [[20, 20, 2, 29, 29, 5]], "n1": [], "n2": []}
WORKED_DETS = [D("a", 7, 7, 7, 0.9), D("a", 1, 1, 1, 0.8), D("n1", 3, 3, 3, 0.8), D("b", 40, 40, 4, 0.6),
               D("b", 25, 25, 3, 0.5), D("n2", 0, 0, 0, 0.5), D("a", 50, 50, 50, 0.3)]
WORKED_CURVE = [[0, 0], [0, 2 / 3], [0.25, 2 / 3], [0.5, 2 / 3], [0.75, 1], [1, 1]]


def test_worked_example_curve_and_every_rate():
    res = froc(WORKED_DETS, WORKED_BOXES)
    assert res.curve == curve_approx(FROCResult({}, 0, 0, WORKED_CURVE))
    two_thirds = pytest.approx(2 / 3)
    assert res.froc == {"0.01": two_thirds, "0.05": two_thirds, "0.1": two_thirds, "0.15": two_thirds,
                        "0.2": two_thirds, "0.25": two_thirds, "1": 1.0, "2": 1.0, "4": 1.0}
    assert (res.lesions, res.volumes) == (3, 4)
    # input order does not matter
    shuffled = [WORKED_DETS[i] for i in np.random.default_rng(3).permutation(len(WORKED_DETS))]
    assert froc(shuffled, WORKED_BOXES).to_dict() == res.to_dict()


def test_highest_tpr_with_fp_per_volume_at_most_f():
    # at f exactly on a curve point the point counts (<=); just below it does not
    res = froc(WORKED_DETS, WORKED_BOXES, rates=(0.0, 0.24, 0.25, 0.74, 0.75, 0.99, 100))
    assert res.froc == pytest.approx({"0": 2 / 3, "0.24": 2 / 3, "0.25": 2 / 3, "0.74": 2 / 3, "0.75": 1.0,
                                      "0.99": 1.0, "100": 1.0})
    # nothing reachable: the first detection is already a FP -> TPR 0 below 1 FP/volume
    res = froc([D("a", 99, 99, 99, 0.9), D("a", 1, 1, 1, 0.1)], {"a": [[0, 0, 0, 2, 2, 2]]}, rates=(0.5, 1))
    assert res.froc == {"0.5": 0.0, "1": 1.0}


def test_unknown_case_is_a_data_error_naming_it():
    with pytest.raises(DataError, match="case042"):
        froc([D("a", 1, 1, 1, 0.5), D("case042", 1, 1, 1, 0.5)], {"a": []})


def test_bad_inputs_raise_typed_errors():
    with pytest.raises(DataError, match="'a'.*score"):
        froc([D("a", 1, 1, 1, float("nan"))], {"a": []})
    with pytest.raises(DataError, match="'a' box 0.*inverted on y"):
        froc([], {"a": [[0, 5, 0, 1, 4, 1]]})
    with pytest.raises(DataError, match="no volumes"):
        froc([], {})
    with pytest.raises(ConfigError, match="rates"):
        froc([], {"a": []}, rates=(-1,))


def brute_force_froc(dets, boxes, rates):
    """Literal §4.1: at each threshold, mark boxes containing a kept maximal point; others are FP."""
    volumes = len(boxes)
    lesions = sum(len(b) for b in boxes.values())
    curve = [[0.0, 0.0]]
    for t in sorted({d.score for d in dets}, reverse=True):
        kept = [d for d in dets if d.score >= t]
        found, fp = set(), 0
        for d in kept:
            hit = [(d.case, k) for k, b in enumerate(boxes[d.case])
                   if b[0] <= d.x <= b[3] and b[1] <= d.y <= b[4] and b[2] <= d.z <= b[5]]
            found.update(hit)
            fp += not hit
        curve.append([fp / volumes, len(found) / lesions if lesions else 0.0])
    table = {f"{r:g}": max(p[1] for p in curve if p[0] <= r + 1e-12) for r in rates}
    return curve, table


def test_sweep_matches_brute_force_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(30):
        boxes = {}
        for c in range(rng.integers(1, 6)):
            blist = []
            for _ in range(rng.integers(0, 4)):
                lo = rng.integers(0, 8, 3)
                hi = lo + rng.integers(0, 5, 3)
                blist.append([*map(int, lo), *map(int, hi)])
            boxes[f"c{c}"] = blist
        dets = [D(f"c{rng.integers(len(boxes))}", *map(int, rng.integers(0, 14, 3)),
                  float(rng.integers(0, 6)) / 5)  # few distinct scores -> many ties
                for _ in range(rng.integers(0, 25))]
        res = froc(dets, boxes)
        curve, table = brute_force_froc(dets, boxes, FROC_RATES)
        assert res.curve == [pytest.approx(p) for p in curve]
        assert res.froc == pytest.approx(table)


def test_froc_scales_to_many_detections():
    rng = np.random.default_rng(1)
    boxes = {f"c{i}": [[10, 10, 1, 30, 30, 5]] if i % 2 else [] for i in range(500)}
    n = 50_000
    cases, xyz, scores = rng.integers(500, size=n), rng.integers(0, 60, (n, 3)).tolist(), rng.random(n).tolist()
    dets = [D(f"c{c}", *p, s) for c, p, s in zip(cases, xyz, scores)]
    t0 = time.perf_counter()
    res = froc(dets, boxes)
    assert time.perf_counter() - t0 < 5.0
    assert len(res.curve) == len({d.score for d in dets}) + 1


# ------------------------------------------------------------------------------------------ NMS


def gaussian_map(shape, blobs, sigma=(3.0, 3.0, 1.5)):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float64)
    out = np.zeros(shape)
    for centre, amp in blobs:
        d2 = sum(((grid[..., i] - centre[i]) / sigma[i]) ** 2 for i in range(3))
        out += amp * np.exp(-0.5 * d2)
    return out.astype(np.float32)


BLOBS = [((10, 10, 4), 0.9), ((30, 12, 8), 0.6), ((20, 35, 2), 0.75)]


def test_nms_finds_blob_centres_sorted_by_score():
    heat = gaussian_map((48, 48, 12), BLOBS)
    peaks = non_max_suppression(heat, radius=(5, 5, 2), threshold=0.1)
    assert [p[:3] for p in peaks] == [(10, 10, 4), (20, 35, 2), (30, 12, 8)]
    assert [p[3] for p in peaks] == pytest.approx([0.9, 0.75, 0.6], abs=1e-3)
    assert all(isinstance(v, int) for p in peaks for v in p[:3]) and all(isinstance(p[3], float) for p in peaks)


def test_nms_threshold_and_top_k():
    heat = gaussian_map((48, 48, 12), BLOBS)
    assert [p[:3] for p in non_max_suppression(heat, (5, 5, 2), threshold=0.7)] == [(10, 10, 4), (20, 35, 2)]
    # threshold is inclusive (>=)
    v = float(heat[30, 12, 8])
    assert [p[:3] for p in non_max_suppression(heat, (5, 5, 2), threshold=v)][-1] == (30, 12, 8)
    assert [p[:3] for p in non_max_suppression(heat, (5, 5, 2), threshold=0.1, top_k=1)] == [(10, 10, 4)]
    assert len(non_max_suppression(heat, (5, 5, 2), threshold=0.1, top_k=None)) == 3
    assert non_max_suppression(heat, (5, 5, 2), threshold=0.95) == []
    # None: every maximum, however low (a FROC ranks them all); here also the flat background's corner plateau
    low = heat * 0.01
    assert non_max_suppression(low, (5, 5, 2)) == []
    assert [p[:3] for p in non_max_suppression(low, (5, 5, 2), threshold=None)][:3] == [(10, 10, 4), (20, 35, 2),
                                                                                          (30, 12, 8)]


def test_nms_plateau_gives_one_peak_the_first_in_c_order():
    heat = np.zeros((20, 20, 10), np.float32)
    heat[5:8, 6:9, 3:5] = 0.8  # a 3x3x2 plateau
    assert non_max_suppression(heat, radius=2, threshold=0.1) == [(5, 6, 3, pytest.approx(0.8))]
    # a plateau larger than the box is still one finding (chained maxima form one plateau)
    heat = np.zeros((40, 10, 4), np.float32)
    heat[2:35, 4, 1] = 0.5
    assert non_max_suppression(heat, radius=1, threshold=0.1) == [(2, 4, 1, 0.5)]
    # a U-shaped plateau: its two arm tips are far apart in C order, still one finding
    heat = np.zeros((6, 8, 1), np.float32)
    heat[0:3, 0, 0] = heat[2, 0:5, 0] = heat[0:3, 4, 0] = 1.0
    assert non_max_suppression(heat, radius=(1, 1, 0), threshold=0.1) == [(0, 0, 0, 1.0)]
    # two equal isolated peaks: one finding if within each other's box, two if not
    heat = np.zeros((20, 20, 5), np.float32)
    heat[5, 5, 2] = heat[8, 5, 2] = 1.0
    assert [p[:3] for p in non_max_suppression(heat, radius=3)] == [(5, 5, 2)]
    assert [p[:3] for p in non_max_suppression(heat, radius=2)] == [(5, 5, 2), (8, 5, 2)]


def test_nms_large_plateau_is_one_peak():
    heat = np.zeros((200, 200, 16), np.float32)
    heat[20:150, 30:180, 2:14] = 1.0  # a saturated region, far more maxima than the pairwise path takes
    heat[190, 190, 8] = 0.5
    assert non_max_suppression(heat, radius=(4, 4, 1)) == [(20, 30, 2, 1.0), (190, 190, 8, 0.5)]


def test_nms_anisotropic_radius_separates_peaks_close_in_z():
    heat = np.zeros((30, 30, 12), np.float32)
    heat[15, 15, 3] = 1.0
    heat[15, 15, 6] = 0.8  # same x, y; 3 slices apart
    assert [p[:3] for p in non_max_suppression(heat, radius=(5, 5, 1))] == [(15, 15, 3), (15, 15, 6)]
    assert [p[:3] for p in non_max_suppression(heat, radius=(5, 5, 3))] == [(15, 15, 3)]
    assert [p[:3] for p in non_max_suppression(heat, radius=5)] == [(15, 15, 3)]


def test_box_max_equals_max_pool3d():
    rng = np.random.default_rng(2)
    for _ in range(20):
        t = torch.from_numpy(rng.random(tuple(rng.integers(1, 12, 3))).astype(np.float32))
        r = tuple(int(v) for v in rng.integers(0, 6, 3))
        k = tuple(2 * v + 1 for v in r)
        # max_pool3d needs padding <= kernel/2, always true here; pad by r -inf
        ref = F.max_pool3d(t[None, None], k, stride=1, padding=r)[0, 0]
        assert torch.equal(_box_max(t, r), ref), r


def naive_neighbourhood(heat, p, r):
    sl = tuple(slice(max(0, p[i] - r[i]), p[i] + r[i] + 1) for i in range(3))
    return heat[sl]


def test_nms_property_random_maps():
    """Every returned point is the maximum of its box and >= threshold; returned points are sorted;
    no returned point lies inside another's box (two maxima with different values cannot: each
    would be >= the other; equal ones are one plateau, of which only one is returned); and every
    local maximum is returned or is a plateau mate of a returned one."""
    rng = np.random.default_rng(4)
    for trial in range(50):
        shape = tuple(int(v) for v in rng.integers(1, 13, 3))
        r = tuple(int(v) for v in rng.integers(0, 4, 3))
        if trial % 2:
            heat = rng.integers(0, 5, shape).astype(np.float32) / 4  # coarse values: many plateaus
        else:
            heat = rng.random(shape).astype(np.float32)
        thr = float(rng.choice([0.0, 0.3, 0.6]))
        peaks = non_max_suppression(heat, radius=r, threshold=thr, top_k=None)
        scores = [p[3] for p in peaks]
        assert scores == sorted(scores, reverse=True)
        for x, y, z, s in peaks:
            assert s == heat[x, y, z] >= thr
            assert s == naive_neighbourhood(heat, (x, y, z), r).max()
        for i, p in enumerate(peaks):
            for q in peaks[i + 1:]:
                assert any(abs(p[a] - q[a]) > r[a] for a in range(3)), (p, q, r)
        returned = {p[:3] for p in peaks}
        for idx in zip(*np.nonzero(heat >= thr)):
            if heat[idx] == naive_neighbourhood(heat, idx, r).max() and idx not in returned:
                assert any(heat[idx] == heat[p[:3]] for p in peaks)
        # top_k keeps a prefix
        assert non_max_suppression(heat, radius=r, threshold=thr, top_k=3) == peaks[:3]


def test_nms_bad_inputs():
    with pytest.raises(DataError, match="3D"):
        non_max_suppression(np.zeros((4, 4)))
    heat = np.zeros((4, 4, 4), np.float32)
    heat[1, 1, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        non_max_suppression(heat)
    with pytest.raises(ConfigError, match="radius"):
        non_max_suppression(np.zeros((4, 4, 4)), radius=(1, -1, 1))
    with pytest.raises(ConfigError, match="top_k"):
        non_max_suppression(np.zeros((4, 4, 4)), top_k=0)
    assert non_max_suppression(np.zeros((0, 4, 4))) == []


def test_nms_full_size_map_is_fast():
    heat = np.random.default_rng(5).random((512, 512, 64), dtype=np.float32)
    t0 = time.perf_counter()
    peaks = non_max_suppression(heat, radius=(10, 10, 2), threshold=0.1, top_k=50)
    elapsed = time.perf_counter() - t0
    assert len(peaks) == 50
    assert elapsed < 3.0, f"{elapsed:.2f} s"  # ~0.5 s on 2 cores; a dense 21x21x5 max_pool3d takes ~50 s


def test_radius_from_mm():
    assert radius_from_mm(1.0, (0.085, 0.085, 1.0)) == (12, 12, 1)
    assert radius_from_mm((2.0, 2.0, 0.4), (1.0, 1.0, 1.0)) == (2, 2, 0)
    assert radius_from_mm(0.0, (0.5, 0.5, 2.0)) == (0, 0, 0)
    with pytest.raises(ConfigError, match="spacing"):
        radius_from_mm(1.0, (0.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match="radius_mm"):
        radius_from_mm(-1.0, (1.0, 1.0, 1.0))


# ---------------------------------------------------------------------------------------- files


def test_csv_round_trip_with_and_without_world(tmp_path):
    dets = [D("case001", 1, 2, 3, 0.123456789012345), D("case 2", 0, 0, 0, 1e-9), D("c3", 511, 511, 63, 1.0)]
    p = tmp_path / "dets.csv"
    write_detections_csv(p, dets)
    assert p.read_text().splitlines()[0] == "case,x,y,z,score"
    assert read_detections_csv(p) == dets
    write_detections_csv(p, dets, world=[(0.1, 0.2, 0.3), (1, 2, 3), (-4.5, 5.5, 6.0)])
    assert p.read_text().splitlines()[0] == "case,x,y,z,score,x_mm,y_mm,z_mm"
    assert read_detections_csv(p) == dets
    assert sorted(os.listdir(tmp_path)) == ["dets.csv"]  # no temp file left behind
    with pytest.raises(ConfigError, match="world"):
        write_detections_csv(p, dets, world=[(0, 0, 0)])


def test_csv_extra_columns_any_order_and_integral_floats(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("score,note,z,y,x,case\n0.5,hi,3.0,2,1,a\n\n")
    assert read_detections_csv(p) == [D("a", 1, 2, 3, 0.5)]


@pytest.mark.parametrize("text, pattern", [
    ("case,x,y,score\na,1,2,0.5\n", "missing column.*z"),
    ("case,x,y,z\na,1,2,3\n", "missing column.*score"),
    ("case,x,y,z,score\na,1,2,3,0.5\nb,1,two,3,0.5\n", "line 3.*y 'two' is not a number"),
    ("case,x,y,z,score\na,1,2,3,high\n", "line 2.*score 'high'"),
    ("case,x,y,z,score\na,1,2,3,nan\n", "line 2.*finite"),
    ("case,x,y,z,score\n,1,2,3,0.5\n", "line 2.*empty case"),
    ("case,x,y,z,score\na,1.5,2,3,0.5\n", "line 2.*not an integer"),
    ("case,x,y,z,score\na,-1,2,3,0.5\n", "line 2.*negative"),
    ("case,x,y,z,score\na,1,2,3\n", "line 2.*4 field"),
    ("", "empty"),
])
def test_csv_errors_name_column_or_line(tmp_path, text, pattern):
    p = tmp_path / "d.csv"
    p.write_text(text)
    with pytest.raises(DataError, match=pattern) as e:
        read_detections_csv(p)
    assert "d.csv" in str(e.value)


def test_read_boxes_json(tmp_path):
    p = tmp_path / "boxesTr.json"
    p.write_text('{"case001": [[120, 88, 10, 161, 130, 17]], "case002": []}')
    assert read_boxes_json(p) == {"case001": [(120, 88, 10, 161, 130, 17)], "case002": []}
    for text, pattern in [('{"c": [[0, 0, 5, 1, 1, 4]]}', "'c' box 0 is inverted on z"),
                          ('{"c": [[0, 0, 0, 1, 1]]}', "'c' box 0 must be 6 integers"),
                          ('{"c": [[0, 0, 0, 1.5, 1, 1]]}', "'c' box 0 must hold integers"),
                          ('{"c": [[-1, 0, 0, 1, 1, 1]]}', "'c' box 0 has a negative"),
                          ('{"c": [], "c": []}', "more than once"),
                          ('{"c": 3}', "'c': boxes must be a list"),
                          ('[1, 2]', "must hold an object"),
                          ('{"c": [', "not valid JSON")]:
        p.write_text(text)
        with pytest.raises(DataError, match=pattern):
            read_boxes_json(p)
    with pytest.raises(DataError, match="not found"):
        read_boxes_json(tmp_path / "nope.json")


def test_plot_froc_writes_png(tmp_path):
    res = froc(WORKED_DETS, WORKED_BOXES)
    p = tmp_path / "froc.png"
    plot_froc(res, p)
    data = p.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    empty = froc([], {"a": []})
    plot_froc([("AH-Net", res), ("baseline", empty)], tmp_path / "two.png", title="DBT")
    assert (tmp_path / "two.png").stat().st_size > 5000
    assert sorted(os.listdir(tmp_path)) == ["froc.png", "two.png"]
    with pytest.raises(ConfigError):
        plot_froc([], tmp_path / "x.png")


def test_evaluate_detection_end_to_end(tmp_path):
    write_detections_csv(tmp_path / "pred.csv", WORKED_DETS)
    (tmp_path / "boxesTr.json").write_text(json.dumps(WORKED_BOXES))
    out = evaluate_detection(tmp_path / "pred.csv", tmp_path / "boxesTr.json",
                             json_out=tmp_path / "out" / "froc.json", png_out=tmp_path / "out" / "froc.png")
    assert out == froc(WORKED_DETS, WORKED_BOXES).to_dict()
    assert json.loads((tmp_path / "out" / "froc.json").read_text()) == out
    assert (tmp_path / "out" / "froc.png").stat().st_size > 0
    assert math.isclose(out["froc"]["0.25"], 2 / 3) and out["lesions"] == 3 and out["volumes"] == 4
    write_detections_csv(tmp_path / "bad.csv", [D("zzz", 1, 1, 1, 0.5)])
    with pytest.raises(DataError, match="zzz"):
        evaluate_detection(tmp_path / "bad.csv", tmp_path / "boxesTr.json")
