"""Lesion detection evaluation of the DBT experiment (§4.1): peaks of the heatmap, then FROC.

§4.1: "Non-maximal suppression is performed on the network output map to obtain the lesion
locations. The network responses at the local maximal voxels are considered as the confidence
scores" (:func:`non_max_suppression`). "The lesion detected by the network is considered a true
positive finding if the maximal point resides in a 3D bounding box annotated by the radiologist.
Similarly, if a bounding box contains a maximal point, we consider it is detected [...]. The
maximal points are otherwise considered as false positive findings." The FROC curve plots the
fraction of lesions found against false positives per volume (:func:`froc`); Table 4 reads it at
0.01 ... 0.25 FP/volume, the DBT challenge at 1, 2 and 4 (:data:`FROC_RATES`).

Coordinates everywhere here are voxel indices of the NIfTI data array's axes 0, 1, 2 - the axes of
``boxesTr.json`` (docs/data.md) - so a heatmap written back in the file's own geometry can be
compared with the boxes directly. Boxes are inclusive on all faces.

Files: detections as CSV ``case,x,y,z,score[,x_mm,y_mm,z_mm]``, boxes as ``boxesTr.json``, the
result as JSON and a PNG plot. Every problem with an input raises :class:`DataError` (or
:class:`ConfigError` for an argument) naming the file, case or line and the rule broken.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..data.volume import _check_box
from ..errors import ConfigError, DataError
from ..fileio import atomic_write_bytes

#: FP/volume rates at which the FROC is read: Table 4's columns, then the DBT challenge's 1, 2, 4.
FROC_RATES = (0.01, 0.05, 0.10, 0.15, 0.20, 0.25, 1.0, 2.0, 4.0)

#: Non-maximum suppression of ``ahnet predict`` (and of the validation during training): neighbourhood
#: radius in mm, minimum score, findings kept per volume.
NMS_RADIUS_MM = 5.0
NMS_THRESHOLD = 0.1
NMS_TOP_K = 50

CSV_COLUMNS = ("case", "x", "y", "z", "score")
CSV_WORLD_COLUMNS = ("x_mm", "y_mm", "z_mm")


@dataclass(frozen=True)
class Detection:
    """One maximal point of a case's heatmap (§4.1): file-array voxel indices and its response."""

    case: str
    x: int
    y: int
    z: int
    score: float


# ---------------------------------------------------------------------------------------- NMS


def non_max_suppression(heatmap: np.ndarray, radius: int | tuple[int, int, int] = (10, 10, 2),
                        threshold: float | None = NMS_THRESHOLD, top_k: int | None = NMS_TOP_K
                        ) -> list[tuple[int, int, int, float]]:
    """The local maxima of a 3D response map, as ``(x, y, z, score)`` sorted by score descending.

    §4.1 takes "the local maximal voxels" of the output map as findings and their responses as the
    confidence scores. A voxel is a maximum when it equals the maximum of the box of
    ``(2 rx + 1) x (2 ry + 1) x (2 rz + 1)`` voxels centred on it (outside the map counts as -inf)
    and its value is ``>= threshold`` (``None``: any value, for a FROC that ranks every maximum). ``radius`` is per axis so that anisotropic volumes (DBT:
    0.085 mm in-plane, 1 mm slices) can suppress over the same distance in mm on every axis, see
    :func:`radius_from_mm`.

    Two maxima can never lie inside each other's box unless their values are equal (each is the
    maximum of a box holding the other). Such equal maxima - a plateau - are one finding: maxima
    linked by chains of "inside each other's box" form one plateau, and only its first voxel in C
    order (smallest x, then y, then z) is kept. Equal scores are ordered by C order as well.

    The box maximum is computed separably (a sliding maximum along each axis in turn, by doubling
    windows), which equals ``max_pool3d(kernel=2r+1, stride=1, padding=r)`` exactly but is ~10-100x
    faster on CPU: a 512x512x64 float32 map takes well under a second.

    ``top_k=None`` keeps every maximum. NaN or infinite voxels are a :class:`DataError` (a broken
    network output, not something to rank).
    """
    r = _check_radius(radius)
    thr = None if threshold is None else _finite_float(threshold, "threshold", ConfigError)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ConfigError(f"top_k must be a positive integer or None, got {top_k!r}")
    arr = np.asarray(heatmap)
    if arr.ndim != 3:
        raise DataError(f"heatmap must be a 3D array (x, y, z), got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"heatmap must be numeric, got dtype {arr.dtype}")
    if arr.size == 0:
        return []
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float32 if arr.dtype == np.float16 else np.float64)
    t = torch.from_numpy(np.ascontiguousarray(arr))
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        raise DataError(f"heatmap has {int((~finite).sum())} NaN or infinite voxel(s); "
                        "cannot rank findings (§4.1 uses the responses as confidence scores)")
    del finite
    with torch.no_grad():
        is_max = t == _box_max(t, r)
        if thr is not None:
            is_max.logical_and_(t >= thr)
        pts = is_max.nonzero()  # (N, 3), lexicographic = C order
        del is_max
        if len(pts) == 0:
            return []
        vals = t[pts[:, 0], pts[:, 1], pts[:, 2]].numpy()
        pts = pts.numpy()
        keep = _first_of_plateaus(pts, vals, r)
    pts, vals = pts[keep], vals[keep]
    order = np.argsort(-vals.astype(np.float64), kind="stable")
    if top_k is not None:
        order = order[:top_k]
    return [(int(pts[i, 0]), int(pts[i, 1]), int(pts[i, 2]), float(vals[i])) for i in order]


def radius_from_mm(radius_mm: float | tuple, spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    """Per-axis voxel radius for an NMS radius in mm: ``round(radius_mm / spacing)``, at least 0.

    One physical suppression distance becomes very different voxel counts on an anisotropic grid
    (§4.1: 0.085 mm in-plane vs 1 mm between slices), e.g. 1 mm -> (12, 12, 1). ``radius_mm`` is
    one number for all axes or three; ``spacing`` is in file-array axis order.
    """
    sp = _three_floats(spacing, "spacing")
    if any(s <= 0 for s in sp):
        raise ConfigError(f"spacing must be positive on every axis, got {sp}")
    if isinstance(radius_mm, (str, bytes)) or not hasattr(radius_mm, "__len__"):
        rm = (_finite_float(radius_mm, "radius_mm", ConfigError),) * 3
    else:
        rm = _three_floats(radius_mm, "radius_mm")
    if any(v < 0 for v in rm):
        raise ConfigError(f"radius_mm must not be negative, got {radius_mm!r}")
    return tuple(int(math.floor(m / s + 0.5)) for m, s in zip(rm, sp))


def _box_max(t: torch.Tensor, r: tuple[int, int, int]) -> torch.Tensor:
    """Maximum over the centred (2r+1) box, -inf outside: max is separable, so one axis at a time."""
    for dim in range(3):
        t = _sliding_max(t, r[dim], dim)
    return t


def _sliding_max(t: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """``out[i] = max(t[i-r : i+r+1])`` along ``dim``, -inf padded, in O(log r) passes.

    After the loop ``m[i] = max(tp[i : i+k])`` of the padded ``tp``; windows of length k double each
    pass, and a last pass joins two overlapping windows into one of length ``2r + 1``.
    """
    if r == 0:
        return t
    n, w = t.shape[dim], 2 * r + 1
    pad_shape = list(t.shape)
    pad_shape[dim] = r
    fill = t.new_full(pad_shape, float("-inf"))
    m = torch.cat([fill, t, fill], dim)
    k = 1
    while 2 * k <= w:
        length = m.shape[dim] - k
        m = torch.maximum(m.narrow(dim, 0, length), m.narrow(dim, k, length))
        k *= 2
    if k < w:
        d = w - k  # <= k, so the two windows overlap or touch
        length = m.shape[dim] - d
        m = torch.maximum(m.narrow(dim, 0, length), m.narrow(dim, d, length))
    return m.narrow(dim, 0, n)


def _first_of_plateaus(pts: np.ndarray, vals: np.ndarray, r: tuple[int, int, int]) -> np.ndarray:
    """For maxima ``pts`` (C order) with values ``vals``: True for the first voxel of each plateau.

    Only maxima of equal value can be inside each other's box, so plateaus are searched within
    groups of equal value only - usually there is none, or a handful of chance float ties.
    """
    keep = np.ones(len(pts), dtype=bool)
    order = np.argsort(vals, kind="stable")  # equal values adjacent, C order kept inside a group
    starts = np.flatnonzero(np.diff(vals[order])) + 1
    for group in np.split(order, starts):
        if len(group) < 2:
            continue
        if len(group) <= _PAIRWISE_MAX:
            keep[group] = _first_of_components_pairwise(pts[group], r)
        else:
            keep[group] = _first_of_components_grid(pts[group], r)
    return keep


_PAIRWISE_MAX = 1024


def _first_of_components_pairwise(g: np.ndarray, r: tuple[int, int, int]) -> np.ndarray:
    """Components of "inside each other's box" among a few points, by min-label propagation."""
    near = np.ones((len(g), len(g)), dtype=bool)
    for ax in range(3):
        near &= np.abs(g[:, None, ax] - g[None, :, ax]) <= r[ax]
    if near.sum() == len(g):  # nobody near anybody else: all distinct findings
        return np.ones(len(g), dtype=bool)
    idx = np.arange(len(g))
    labels = idx
    while True:
        new = np.where(near, labels[None, :], len(g)).min(axis=1)
        new = new[new]  # pointer jumping
        if np.array_equal(new, labels):
            return labels == idx
        labels = new


def _first_of_components_grid(pts: np.ndarray, r: tuple[int, int, int]) -> np.ndarray:
    """Components of "inside each other's box" among many points (a large plateau).

    Min-label propagation on the points' bounding crop (a box minimum per pass, with pointer
    jumping so that long chains converge in few passes); a component's label converges to its
    C-order-first voxel's index in the crop.
    """
    lo = pts.min(0)
    shape = tuple(int(v) for v in pts.max(0) - lo + 1)
    own = torch.from_numpy(np.ravel_multi_index(tuple((pts - lo).T), shape).astype(np.int64))
    labels = torch.full(shape, math.inf, dtype=torch.float64)
    flat = labels.view(-1)
    flat[own] = own.to(torch.float64)
    cur = flat[own]
    while True:
        new = torch.minimum(cur, (-_box_max(-labels, r)).view(-1)[own])
        while True:  # pointer jumping: adopt the label of one's label
            flat[own] = new
            jumped = flat[new.long()]
            if torch.equal(jumped, new):
                break
            new = jumped
        if torch.equal(new, cur):
            break
        cur = new
    return (cur.long() == own).numpy()


# --------------------------------------------------------------------------------------- FROC


@dataclass
class FROCResult:
    """FROC of one detector on one set of volumes (§4.1, Fig. 6, Table 4)."""

    froc: dict[str, float]  # f"{rate:g}" -> highest TPR with FP/volume <= rate
    lesions: int
    volumes: int
    curve: list[list[float]]  # [[fp_per_volume, tpr], ...], from the highest threshold down

    def to_dict(self) -> dict:
        return {"froc": dict(self.froc), "lesions": self.lesions, "volumes": self.volumes,
                "curve": [list(p) for p in self.curve]}


def froc(detections: Sequence[Detection], boxes: Mapping[str, Sequence[Sequence[int]]],
         rates=FROC_RATES) -> FROCResult:
    """FROC of ``detections`` against the radiologists' ``boxes`` (§4.1).

    Rules: the volumes are exactly the cases of ``boxes`` (an empty list is a negative volume and
    still counts in FP/volume). A detection inside a box of its own case (faces inclusive) is a
    true positive and finds that box - every box it lies in, if boxes overlap; several detections
    in one box find it once and none of them is a false positive. Any detection outside all boxes
    of its case is a false positive. The threshold sweeps every distinct score, highest first;
    detections with equal scores enter together. ``froc[f"{rate:g}"]`` is the highest TPR reached
    with FP/volume <= rate (0.0 if none). With no lesion at all the TPR is defined as 0.

    Cost: one sort of the D scores plus D x B_case box tests per case.
    """
    rates = _check_rates(rates)
    matched = list(_match(detections, boxes).values())
    n_lesions = sum(len(best) for _, _, best in matched)
    n_volumes = len(matched)
    fp_sorted = np.sort(np.concatenate([fp for _, fp, _ in matched]))
    box_sorted = np.sort(np.concatenate([best for _, _, best in matched]))  # -inf: never found
    thresholds = np.unique(np.concatenate([scores for scores, _, _ in matched]))[::-1]
    # counts of scores >= t for every threshold t at once
    n_fp = len(fp_sorted) - np.searchsorted(fp_sorted, thresholds, side="left")
    n_tp = len(box_sorted) - np.searchsorted(box_sorted, thresholds, side="left")
    fp_rate = np.concatenate([[0.0], n_fp / n_volumes])
    tpr = np.concatenate([[0.0], n_tp / n_lesions if n_lesions else np.zeros(len(thresholds))])
    curve = [[float(f), float(p)] for f, p in zip(fp_rate, tpr)]
    fp_counts = np.concatenate([[0], n_fp])
    table = {}
    for rate in rates:
        ok = fp_counts <= rate * n_volumes * (1 + 1e-12)  # FP/vol <= rate, exact for counts
        table[f"{rate:g}"] = float(tpr[ok].max())
    return FROCResult(froc=table, lesions=n_lesions, volumes=n_volumes, curve=curve)


def case_findings(detections: Sequence[Detection], boxes: Mapping[str, Sequence[Sequence[int]]]
                  ) -> dict[str, dict[str, list]]:
    """Per volume, what the FROC is made of: ``{"fp": [scores of false positives], "lesions": [per box the
    best score inside, None if missed]}``, JSON-ready, with :func:`froc`'s rules and checks.

    Kept beside the FROC (``ahnet experiment``'s result.json) so that it can be recomputed on any
    resample of the volumes (:func:`ahnet.evaluation.bootstrap.froc_tpr`) without the predictions.
    """
    return {case: {"fp": [float(s) for s in fp], "lesions": [float(b) if np.isfinite(b) else None for b in best]}
            for case, (_, fp, best) in _match(detections, boxes).items()}


def _match(detections: Sequence[Detection], boxes: Mapping[str, Sequence[Sequence[int]]]
           ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per volume of ``boxes``: its detections' scores, its false positives' scores and, per box, the best
    score inside (-inf: missed), with :func:`froc`'s rules; the inputs are checked here."""
    if not isinstance(boxes, Mapping):
        raise ConfigError(f"boxes must be a mapping {{case: [[x0, y0, z0, x1, y1, z1], ...]}}, "
                          f"got {type(boxes).__name__}")
    if not boxes:
        raise DataError("no volumes to evaluate: the boxes have no case (FP per volume is undefined)")
    case_boxes: dict[str, np.ndarray] = {}
    for case, blist in boxes.items():
        if isinstance(blist, (str, bytes)) or not isinstance(blist, Sequence):
            raise DataError(f"case {case!r}: boxes must be a list of [x0, y0, z0, x1, y1, z1] "
                            f"(an empty list for a negative volume), got {blist!r}")
        checked = [_check_box(b, f"case {case!r} box {k}") for k, b in enumerate(blist)]
        case_boxes[case] = np.asarray(checked, dtype=np.int64).reshape(-1, 6)

    per_case: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    unknown: set[str] = set()
    for d in detections:
        if d.case not in case_boxes:
            unknown.add(str(d.case))
            continue
        score = _finite_float(d.score, f"case {d.case!r}: score of the detection at ({d.x}, {d.y}, {d.z})",
                              DataError)
        per_case[d.case].append((float(d.x), float(d.y), float(d.z), score))
    if unknown:
        names = sorted(unknown)
        raise DataError(f"detections for case(s) {', '.join(repr(c) for c in names[:5])}"
                        f"{' ...' if len(names) > 5 else ''} that the boxes do not list; every evaluated "
                        "volume needs an entry in the boxes ([] for a negative volume)")

    empty = np.zeros(0)
    matched = {case: (empty, empty, np.full(len(b), -np.inf)) for case, b in case_boxes.items()}
    for case, dets in per_case.items():
        a = np.asarray(dets, dtype=np.float64)
        xyz, s = a[:, :3], a[:, 3]
        b = case_boxes[case]
        if len(b) == 0:
            matched[case] = (s, s, empty)
            continue
        inside = ((xyz[:, None, :] >= b[None, :, :3]) & (xyz[:, None, :] <= b[None, :, 3:])).all(axis=2)
        matched[case] = (s, s[~inside.any(axis=1)], np.where(inside, s[:, None], -np.inf).max(axis=0))
    return matched


# ---------------------------------------------------------------------------------------- files


def read_detections_csv(path) -> list[Detection]:
    """Detections from CSV with columns ``case,x,y,z,score`` (any order; extra columns ignored)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, row) for row in reader]  # line_num: where the record ends
    except FileNotFoundError as e:
        raise DataError(f"{path}: not found") from e
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot be read as CSV ({e})") from e
    if not rows:
        raise DataError(f"{path}: empty; need a header line {','.join(CSV_COLUMNS)}")
    header = [h.strip() for h in rows[0][1]]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; the header must name "
                        f"{', '.join(CSV_COLUMNS)} (found: {', '.join(header) or 'nothing'})")
    doubled = sorted({c for c in CSV_COLUMNS if header.count(c) > 1})
    if doubled:
        raise DataError(f"{path}: column(s) {', '.join(doubled)} appear more than once in the header")
    col = {c: header.index(c) for c in CSV_COLUMNS}
    out = []
    for line_no, row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path} line {line_no}"
        if len(row) != len(header):
            raise DataError(f"{where}: {len(row)} field(s), the header has {len(header)}")
        case = row[col["case"]].strip()
        if not case:
            raise DataError(f"{where}: empty case name")
        x, y, z = (_voxel_index(row[col[a]], a, where) for a in "xyz")
        text = row[col["score"]].strip()
        try:
            score = float(text)
        except ValueError:
            raise DataError(f"{where}: score {text!r} is not a number") from None
        if not math.isfinite(score):
            raise DataError(f"{where}: score {text!r} must be a finite number")
        out.append(Detection(case, x, y, z, score))
    return out


def write_detections_csv(path, detections: Sequence[Detection],
                         world: Sequence[tuple[float, float, float]] | None = None) -> None:
    """Write ``case,x,y,z,score`` (+ ``x_mm,y_mm,z_mm`` when ``world`` is given), atomically.

    Scores are written with ``repr`` so that reading the file back gives the same floats.
    """
    detections = list(detections)
    if world is not None:
        world = list(world)
        if len(world) != len(detections):
            raise ConfigError(f"world has {len(world)} coordinate(s) for {len(detections)} detection(s)")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS + (CSV_WORLD_COLUMNS if world is not None else ()))
    for i, d in enumerate(detections):
        row = [d.case, int(d.x), int(d.y), int(d.z), repr(float(d.score))]
        if world is not None:
            row += [repr(float(v)) for v in _three_floats(world[i], f"world[{i}]")]
        w.writerow(row)
    atomic_write_bytes(Path(path), buf.getvalue().encode("utf-8"))


def read_boxes_json(path) -> dict[str, list[tuple[int, ...]]]:
    """``boxesTr.json`` (docs/data.md): ``{case: [[x0, y0, z0, x1, y1, z1], ...]}``, inclusive file-array
    voxel indices, ``[]`` for a negative volume; validated like the training boxes."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as e:
        raise DataError(f"{path}: not found") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from e

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise DataError(f"{path}: key(s) {dup} appear more than once")
        return dict(pairs)

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e
    except (ValueError, RecursionError) as e:  # e.g. an integer with thousands of digits, deep nesting
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: must hold an object {{case: [[x0, y0, z0, x1, y1, z1], ...]}}, "
                        f"got {type(data).__name__}")
    out = {}
    for case, blist in data.items():
        if not case.strip():
            raise DataError(f"{path}: empty case name")
        if case in (".", "..") or "/" in case or "\\" in case or "\0" in case:
            raise DataError(f"{path}: invalid case name {case!r} (a case name is a file name stem, not a path)")
        if not isinstance(blist, list):
            raise DataError(f"{path}: case {case!r}: boxes must be a list of [x0, y0, z0, x1, y1, z1] "
                            f"(an empty list for a negative volume), got {blist!r}")
        checked = []
        for k, box in enumerate(blist):
            if not isinstance(box, list):
                raise DataError(f"{path}: case {case!r} box {k} must be a list of 6 integers, got {box!r}")
            checked.append(_check_box(box, f"{path}: case {case!r} box {k}"))
        out[case] = checked
    return out


def plot_froc(result: FROCResult | Sequence[tuple[str, FROCResult]], path, title: str = "FROC",
              intervals: Mapping[str, Mapping[str, tuple[float, float]]] | None = None) -> None:
    """FROC curve(s) as in Fig. 6: TPR against FP/volume on a log axis, markers at the read-out rates.

    The curve is drawn as steps (the TPR reachable at a FP/volume holds until the next threshold
    adds a point), so each marker - the "highest TPR with FP/volume <= f" of :func:`froc` - lies on
    it. Points with 0 FP/volume are drawn at the left edge, 0.01. The x axis spans 0.01 to 4, or
    to the largest read-out rate if that is larger. ``intervals``: per curve name, per read-out rate
    (``froc``'s keys) a (low, high) TPR interval, drawn as an error bar on the marker. Saved atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(result, FROCResult):
        items = [("detections", result)]
    else:
        items = list(result)
        if not items or not all(isinstance(it, (tuple, list)) and len(it) == 2 and isinstance(it[1], FROCResult)
                                for it in items):
            raise ConfigError("plot_froc needs a FROCResult or a non-empty list of (name, FROCResult)")
    xmin = 0.01
    xmax = max([4.0] + [float(k) for _, res in items for k in res.froc])
    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, res in items:
        fp = [max(xmin, p[0]) for p in res.curve] or [xmin]
        tp = [p[1] for p in res.curve] or [0.0]
        if fp[-1] < xmax:
            fp, tp = fp + [xmax], tp + [tp[-1]]
        label = (f"{name} ({res.lesions} lesion{'s' * (res.lesions != 1)}, "
                 f"{res.volumes} volume{'s' * (res.volumes != 1)})")
        (line,) = ax.plot(fp, tp, drawstyle="steps-post", label=label)
        rates = sorted((float(k), v) for k, v in res.froc.items())
        ax.plot([r for r, _ in rates], [v for _, v in rates], "o", color=line.get_color(), ms=5, clip_on=False)
        bars = (intervals or {}).get(name, {})
        if bars:
            at = [(float(k), res.froc[k], *bars[k]) for k in bars]
            ax.errorbar([a[0] for a in at], [a[1] for a in at], fmt="none", ecolor=line.get_color(), capsize=3,
                        yerr=[[max(0.0, v - lo) for _, v, lo, _ in at], [max(0.0, hi - v) for _, v, _, hi in at]])
    ax.set_xscale("log")
    ax.set_xlim(xmin, xmax)
    ticks = sorted({xmin, xmax, *(r for r in (0.05, 0.1, 0.25, 0.5, 1, 2, 4) if xmin <= r <= xmax)})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("false positives per volume")
    ax.set_ylabel("true positive rate (lesions found)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(Path(path), buf.getvalue())


def evaluate_detection(pred_csv, boxes_json, json_out=None, png_out=None) -> dict:
    """Read detections and boxes, compute the FROC (§4.1), write JSON and PNG if asked; return the dict."""
    for p, what in ((json_out, "JSON output"), (png_out, "PNG output")):
        if p is not None and Path(p).is_dir():
            raise ConfigError(f"{what} {p}: is a folder, need a file path")
    detections = read_detections_csv(pred_csv)
    boxes = read_boxes_json(boxes_json)
    result = froc(detections, boxes)
    out = result.to_dict()
    if json_out is not None:
        atomic_write_bytes(Path(json_out), (json.dumps(out, indent=2) + "\n").encode("utf-8"))
    if png_out is not None:
        plot_froc(result, png_out)
    return out


# -------------------------------------------------------------------------------------- helpers

def _voxel_index(text: str, axis: str, where: str) -> int:
    """A non-negative integer; "12.0" is accepted (tables written as floats), "12.5" is not."""
    s = text.strip()
    try:
        return _non_negative(int(s), axis, s, where)
    except ValueError:
        pass
    try:
        v = float(s)
    except ValueError:
        raise DataError(f"{where}: {axis} {s!r} is not a number") from None
    if not math.isfinite(v) or not v.is_integer():
        raise DataError(f"{where}: {axis} {s!r} is not an integer voxel index")
    return _non_negative(int(v), axis, s, where)


def _non_negative(v: int, axis: str, s: str, where: str) -> int:
    if v < 0:
        raise DataError(f"{where}: {axis} {s!r} is negative; voxel indices start at 0")
    return v


def _check_radius(radius) -> tuple[int, int, int]:
    vals = (radius,) * 3 if not hasattr(radius, "__len__") else tuple(radius)
    if len(vals) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in vals):
        raise ConfigError(f"radius must be a non-negative integer or three of them (x, y, z), got {radius!r}")
    return tuple(int(v) for v in vals)


def _check_rates(rates) -> tuple[float, ...]:
    try:
        vals = tuple(float(r) for r in rates)
    except (TypeError, ValueError):
        raise ConfigError(f"rates must be numbers (FP per volume), got {rates!r}") from None
    if not vals or any(not math.isfinite(v) or v < 0 for v in vals):
        raise ConfigError(f"rates must be one or more finite FP-per-volume values >= 0, got {rates!r}")
    return vals


def _finite_float(v, what: str, err=ConfigError) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise err(f"{what} must be a number, got {v!r}") from None
    if not math.isfinite(f):
        raise err(f"{what} must be finite, got {v!r}")
    return f


def _three_floats(v, what: str) -> tuple[float, float, float]:
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != 3:
        raise ConfigError(f"{what} must be three numbers (x, y, z), got {v!r}")
    return tuple(_finite_float(e, what) for e in v)
