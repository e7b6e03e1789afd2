"""Dice Global and Dice per Case, the two segmentation metrics of the paper's LiTS experiment.

§4.2 / Table 5 report, for liver and lesion, (1) Dice Global (DG): one Dice over all voxels of all
cases pooled, ``2 * sum|A∩B| / (sum|A| + sum|B|)``, dominated by large cases, and (2) Dice per Case
(DPC): the mean of the per-case Dice, where every case weighs the same (so a missed small lesion
costs a lot). Both come from the same per-case counts, so cases are read one at a time and only
three integers per case and class are kept: memory stays flat however many cases there are.

LiTS convention (:data:`LITS_CLASSES`): "liver" is label >= 1 (liver *including* lesion), "lesion"
is label 2. A lesion voxel predicted as liver is therefore right for liver and wrong for lesion.

Empty masks: when prediction and truth are both empty for a class the Dice is 1.0 (nothing to find,
nothing found), as in the LiTS evaluation of lesion-free cases; an empty truth with a non-empty
prediction (or the reverse) gives 0.0. The same rule makes DG 1.0 for a class absent everywhere.
This equals MONAI's ``DiceMetric(ignore_empty=False)``; MONAI's default ``ignore_empty=True``
returns NaN for every case with an empty truth instead.

Prediction and truth are compared voxel for voxel on the file's own grid (no reorientation): the
prediction must have the truth's shape and affine.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import nibabel as nib
import numpy as np
from tqdm import tqdm

from ..errors import ConfigError, DataError
from ..fileio import atomic_write_text

#: LiTS label convention (§4.2): 0 background, 1 liver, 2 lesion; "liver" is the whole organ.
LITS_CLASSES: dict[str, tuple[int, ...]] = {"liver": (1, 2), "lesion": (2,)}

#: Surface Dice counts surface points within this distance (mm) of the other surface as matched.
SURFACE_TOLERANCE_MM = 2.0

#: Largest absolute difference allowed between the prediction's and the truth's affine (mm).
AFFINE_ATOL = 1e-3

#: How many unmatched case names an error message lists.
MAX_LISTED = 10

_EXTENSIONS = (".nii.gz", ".nii")


# ------------------------------------------------------------------------------------- metrics

def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice ``2|A∩B| / (|A| + |B|)`` of two binary masks (§4.2); 1.0 when both are empty.

    Masks are bool arrays or numeric arrays holding only 0 and 1; a label map (values 2, ...) is
    refused rather than silently binarised - use :func:`evaluate_arrays` with a class spec for those.
    """
    p = _as_binary(pred, "pred")
    t = _as_binary(truth, "truth")
    if p.shape != t.shape:
        raise DataError(f"dice: pred shape {p.shape} differs from truth shape {t.shape}")
    inter = int(np.count_nonzero(p & t))
    return dice_from_counts(inter, int(np.count_nonzero(p)), int(np.count_nonzero(t)))


@dataclass
class SegmentationResult:
    """Dice Global and Dice per Case per class, plus every case's Dice (Table 5's DG and DPC), its
    voxel counts and, unless switched off, its HD95 and surface Dice."""

    dice_global: dict[str, float]  # per class: all voxels of all cases pooled
    dice_per_case: dict[str, float]  # per class: mean over cases of the per-case Dice
    cases: dict[str, dict[str, float]] = field(default_factory=dict)  # case -> class -> Dice
    counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # case -> class -> tp/fp/fn
    surface: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)  # -> hd95_mm, surface_dice
    surface_tolerance_mm: float | None = None

    def to_dict(self) -> dict:
        """Plain JSON-ready dict ``{"dice_global", "dice_per_case", "cases", "counts"}``, plus
        ``"surface"`` and ``"surface_tolerance_mm"`` when surface metrics were computed."""
        out = {
            "dice_global": dict(self.dice_global),
            "dice_per_case": dict(self.dice_per_case),
            "cases": {case: dict(d) for case, d in self.cases.items()},
            "counts": {case: {c: dict(v) for c, v in d.items()} for case, d in self.counts.items()},
        }
        if self.surface_tolerance_mm is not None:
            out["surface"] = {case: {c: dict(v) for c, v in d.items()} for case, d in self.surface.items()}
            out["surface_tolerance_mm"] = self.surface_tolerance_mm
        return out


def evaluate_arrays(pairs: Iterable[tuple],
                    classes: Mapping[str, Sequence[int]] = LITS_CLASSES,
                    surface_tolerance_mm: float | None = SURFACE_TOLERANCE_MM) -> SegmentationResult:
    """DG and DPC (§4.2) of ``(case, prediction, truth)`` label maps, one class per ``classes`` entry;
    a fourth item, the voxel spacing in mm (default 1, 1, 1), scales HD95 and surface Dice.

    A class is the set of voxels whose label is one of its values (LiTS: liver = {1, 2}). Label
    maps must hold integers (bool or integral floats accepted) and have equal shapes; case names
    must be unique. ``pairs`` is consumed once, one pair at a time, so a generator that reads
    cases lazily keeps memory flat. ``surface_tolerance_mm=None`` skips HD95 and surface Dice.
    """
    return _evaluate(pairs, _check_classes(classes), validate=True, surface_tolerance_mm=surface_tolerance_mm)


def surface_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float],
                    tolerance_mm: float) -> dict[str, float | None]:
    """HD95 (mm) and surface Dice at ``tolerance_mm`` of two binary masks, with MONAI's metrics.

    Both are undefined (``None``) when either mask is empty, or not 2D or 3D. Computed on the masks'
    common bounding box plus one voxel, which leaves every surface and every distance unchanged.
    """
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    if pred.ndim not in (2, 3) or not pred.any() or not truth.any():
        return {"hd95_mm": None, "surface_dice": None}
    both = np.argwhere(pred | truth)
    lo, hi = np.maximum(both.min(0) - 1, 0), both.max(0) + 2
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    p = torch.from_numpy(np.ascontiguousarray(pred[box]))[None, None].float()
    t = torch.from_numpy(np.ascontiguousarray(truth[box]))[None, None].float()
    spacing = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd95 = compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=spacing)
        nsd = compute_surface_dice(p, t, [float(tolerance_mm)], include_background=True, spacing=spacing)
    return {"hd95_mm": float(hd95.item()), "surface_dice": float(nsd.item())}


def classes_from_labels(labels: Mapping[str, object]) -> dict[str, tuple[int, ...]]:
    """One class per non-background label of a dataset.json ``labels`` map, for data sets other
    than LiTS: ``{"background": 0, "liver": 1, "spleen": 2}`` -> ``{"liver": (1,), "spleen": (2,)}``.

    nnU-Net v2 region entries (a list of values) become multi-value classes; the v1 layout
    ``{"0": "background", "1": "liver"}`` is accepted too. Note that for LiTS this gives
    liver = (1,) (organ without lesion), not the challenge's liver = (1, 2): use
    :data:`LITS_CLASSES` to reproduce Table 5.
    """
    if not isinstance(labels, Mapping) or not labels:
        raise ConfigError(f"labels must be a non-empty mapping name -> label value, got {labels!r}")
    items = list(labels.items())
    if all(isinstance(v, str) for _, v in items) and all(_is_int_string(k) for k, _ in items):
        items = [(v, int(k)) for k, v in items]  # nnU-Net v1: {"0": "background", "1": "liver"}
    out: dict[str, tuple[int, ...]] = {}
    single: dict[int, str] = {}  # regions may overlap; two plain labels may not share a value
    for name, value in items:
        values = _label_values(value, f"labels[{name!r}]")
        if values == (0,):
            continue  # background
        if not isinstance(name, str) or not name:
            raise ConfigError(f"labels: class names must be non-empty strings, got {name!r}")
        if len(values) == 1:
            if values[0] in single:
                raise ConfigError(f"labels: value {values[0]} is given to both "
                                  f"{single[values[0]]!r} and {name!r}")
            single[values[0]] = name
        out[name] = values
    if not out:
        raise ConfigError(f"labels: no non-background label in {dict(labels)!r}")
    return _check_classes(out)


def resolve_classes(spec: str | Mapping[str, Sequence[int]] | None, dataset: str | Path | None = None,
                    gt_dir: str | Path | None = None) -> tuple[dict[str, tuple[int, ...]], str]:
    """The classes to score and where they came from, so that a data set is scored on its own classes.

    ``spec``: ``"lits"`` (liver = labels 1 and 2, lesion = 2: Table 5's rule), a JSON object or a
    mapping ``{name: [label values]}``, or ``None``: the ``labels`` of ``dataset``'s dataset.json,
    else of the dataset.json beside ``gt_dir`` (``DATASET/labelsTr`` -> ``DATASET/dataset.json``).
    Without any of these the call fails rather than guess: a class the data does not have would
    score a perfect 1.0.
    """
    if isinstance(spec, str):
        if spec.strip().lower() == "lits":
            return dict(LITS_CLASSES), "the LiTS rule (--classes lits)"
        try:
            spec = json.loads(spec)
        except (ValueError, RecursionError) as err:
            raise ConfigError(f"--classes is neither 'lits' nor valid JSON ({str(err)[:100]}); give an object such "
                              'as {"liver": [1, 2], "lesion": [2]}') from None
        if not isinstance(spec, dict):
            raise ConfigError('--classes must be \'lits\' or a JSON object such as {"liver": [1, 2], "lesion": [2]}')
    if spec is not None:
        return _check_classes(spec), "--classes"
    candidates = [Path(dataset) / "dataset.json"] if dataset is not None else []
    if gt_dir is not None:
        candidates.append(Path(gt_dir).parent / "dataset.json")
    for path in candidates:
        if path.is_file():
            try:
                labels = json.loads(path.read_text()).get("labels")
            except (ValueError, AttributeError, OSError) as err:
                raise DataError(f"{path}: not a readable dataset.json ({type(err).__name__})") from None
            if labels is None:
                raise DataError(f"{path}: has no 'labels' to take the classes from; pass --classes")
            return classes_from_labels(labels), str(path)
    looked = ", ".join(str(p) for p in candidates) or "nowhere (no --dataset, no ground-truth folder)"
    raise ConfigError(f"which classes to score? No dataset.json at {looked}: name the data set with --dataset, "
                      "or the classes with --classes lits (liver = 1+2, lesion = 2) or --classes JSON")


# ------------------------------------------------------------------------------------- folders

def evaluate_segmentation(pred_dir, gt_dir, json_out=None, csv_out=None,
                          classes: str | Mapping[str, Sequence[int]] | None = None,
                          progress: bool = True,
                          surface_tolerance_mm: float | None = SURFACE_TOLERANCE_MM) -> SegmentationResult:
    """DG and DPC (§4.2, Table 5) of the predictions in ``pred_dir`` against the labels in ``gt_dir``.

    ``classes`` as :func:`resolve_classes` takes them (default: the dataset.json beside ``gt_dir``;
    ``"lits"`` for Table 5's rule). Files pair by case name: ``{case}.nii.gz`` (or ``.nii``) in both
    folders, nnU-Net labelsTr style;
    other files are ignored. Every case must be in both folders, and each prediction must have
    its truth's shape and affine (within 1e-3), since Dice is counted voxel for voxel on the file
    grid; HD95 and surface Dice are in mm of the truth's voxel size. Cases are read one at a time.
    ``json_out`` gets :meth:`SegmentationResult.to_dict`
    (indent 2), ``csv_out`` one row per case (``case,<class>,...``); both are written atomically.
    """
    cls = resolve_classes(classes, gt_dir=gt_dir)[0]
    json_path = _check_output(json_out, "json_out")
    csv_path = _check_output(csv_out, "csv_out")
    if json_path is not None and csv_path is not None and json_path.resolve() == csv_path.resolve():
        raise ConfigError(f"json_out and csv_out are the same file: {json_path}")

    pred_files = _list_cases(pred_dir, "prediction")
    gt_files = _list_cases(gt_dir, "ground truth")
    _check_pairing(pred_files, gt_files, pred_dir, gt_dir)

    cases = sorted(gt_files)
    result = _evaluate(_read_pairs(cases, pred_files, gt_files, progress), cls, validate=False,
                       surface_tolerance_mm=surface_tolerance_mm)

    if json_path is not None:
        atomic_write_text(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
    if csv_path is not None:
        atomic_write_text(csv_path, _csv_text(result, list(cls)))
    return result


# ------------------------------------------------------------------------------------- helpers

def dice_from_counts(inter: int, n_pred: int, n_truth: int) -> float:
    """Dice from ``|A∩B|``, ``|A|`` and ``|B|``; 1.0 when both masks are empty (module docstring).
    The one definition of Dice in ahnet: evaluation, validation during training and reports."""
    denom = n_pred + n_truth
    return 1.0 if denom == 0 else 2.0 * inter / denom


def class_counts(pred: np.ndarray, truth: np.ndarray,
                 classes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, int, int]]:
    """Per class, ``(|pred ∩ truth|, |pred|, |truth|)`` of two label maps (numpy or torch); Dice
    global pools these over cases (or patches), Dice per case takes each case's own."""
    return {name: _mask_counts(*masks) for name, masks in _class_masks(pred, truth, classes)}


def _class_masks(pred, truth, classes: Mapping[str, tuple[int, ...]]):
    """``(name, (pred mask, truth mask))`` of each class, one class at a time (memory stays flat)."""
    for name, values in classes.items():
        yield name, (_class_mask(pred, values), _class_mask(truth, values))


def _mask_counts(p, t) -> tuple[int, int, int]:
    def count(mask) -> int:
        return int(np.count_nonzero(mask)) if isinstance(mask, np.ndarray) else int(mask.sum())

    return count(p & t), count(p), count(t)


def _evaluate(pairs, classes: dict[str, tuple[int, ...]], *, validate: bool,
              surface_tolerance_mm: float | None = SURFACE_TOLERANCE_MM) -> SegmentationResult:
    totals = {c: [0, 0, 0] for c in classes}  # intersection, |pred|, |truth| pooled over cases
    per_case: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, dict[str, int]]] = {}
    surface: dict[str, dict[str, dict[str, float | None]]] = {}
    for item in pairs:
        try:
            case, pred, truth, *rest = item
            spacing = tuple(rest[0]) if rest else (1.0,) * np.ndim(pred)
            if len(rest) > 1:
                raise ValueError
        except (TypeError, ValueError):
            raise DataError("evaluate_arrays: each item must be a (case, prediction, truth[, spacing]) tuple, "
                            f"got {type(item).__name__}") from None
        del item  # hold no reference to a case once it is counted: memory stays flat
        if not isinstance(case, str) or not case:
            raise DataError(f"evaluate_arrays: case names must be non-empty strings, got {case!r}")
        if case in per_case:
            raise DataError(f"case {case!r}: given twice (case names must be unique)")
        if validate:
            pred = _as_label_map(pred, f"case {case!r}: prediction")
            truth = _as_label_map(truth, f"case {case!r}: ground truth")
            if pred.shape != truth.shape:
                raise DataError(f"case {case!r}: prediction shape {pred.shape} differs from "
                                f"ground truth shape {truth.shape}")
        scores, case_counts, case_surface = {}, {}, {}
        for name, (p, t) in _class_masks(pred, truth, classes):
            inter, n_pred, n_truth = _mask_counts(p, t)
            for i, count in enumerate((inter, n_pred, n_truth)):
                totals[name][i] += count
            scores[name] = dice_from_counts(inter, n_pred, n_truth)
            case_counts[name] = {"tp": inter, "fp": n_pred - inter, "fn": n_truth - inter}
            if surface_tolerance_mm is not None:
                case_surface[name] = surface_metrics(p, t, spacing, surface_tolerance_mm)
            del p, t
        per_case[case], counts[case] = scores, case_counts
        if surface_tolerance_mm is not None:
            surface[case] = case_surface
        del pred, truth
    if not per_case:
        raise DataError("no cases to evaluate")
    n = len(per_case)
    return SegmentationResult(
        dice_global={c: dice_from_counts(*totals[c]) for c in classes},
        dice_per_case={c: math.fsum(s[c] for s in per_case.values()) / n for c in classes},
        cases=per_case, counts=counts, surface=surface, surface_tolerance_mm=surface_tolerance_mm,
    )


def _class_mask(labels: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
    if len(values) == 1:
        return labels == values[0]
    mask = labels == values[0]
    for v in values[1:]:
        mask |= labels == v
    return mask


def _check_classes(classes) -> dict[str, tuple[int, ...]]:
    """Class spec -> ``{name: tuple of label values}``; any integer values, even absent ones."""
    if not isinstance(classes, Mapping) or not classes:
        raise ConfigError(f"classes must be a non-empty mapping name -> label values, got {classes!r}")
    out = {}
    for name, values in classes.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"classes: names must be non-empty strings, got {name!r}")
        if name == "case":
            raise ConfigError("classes: 'case' is reserved (it is the CSV's first column)")
        out[name] = _label_values(values, f"classes[{name!r}]")
    return out


def _label_values(values, what: str) -> tuple[int, ...]:
    if _is_int(values):
        return (int(values),)
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise ConfigError(f"{what} must be an integer or a sequence of integers, got {values!r}")
    vals = list(values)
    if not vals or not all(_is_int(v) for v in vals):
        raise ConfigError(f"{what} must be a non-empty sequence of integers, got {values!r}")
    out = tuple(dict.fromkeys(int(v) for v in vals))  # drop repeats, keep order
    return out


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_int_string(s) -> bool:
    return isinstance(s, str) and s.strip().lstrip("-").isdigit()


def _as_binary(mask, what: str) -> np.ndarray:
    a = np.asarray(mask)
    if a.dtype == bool:
        return a
    if a.dtype.kind not in "iuf":
        raise DataError(f"dice: {what} must be a binary mask, got dtype {a.dtype}")
    ok = (a == 0) | (a == 1)
    if not ok.all():
        raise DataError(f"dice: {what} must be a binary mask (values 0 and 1 only), found "
                        f"{a[~ok].flat[0]!r}; use evaluate_arrays with a class spec for label maps")
    return a == 1


def _as_label_map(labels, what: str) -> np.ndarray:
    """Integer-valued array (bool, ints, or floats with integral values); anything else is refused
    because a fractional "label" means a probability map or a resampling artefact, not a mask."""
    try:
        a = np.asarray(labels)
    except Exception as e:
        raise DataError(f"{what}: cannot be read as an array ({type(e).__name__}: {e})") from None
    if a.dtype.kind in "biu":
        return a
    if a.dtype.kind != "f":
        raise DataError(f"{what}: labels must be integers, got dtype {a.dtype}")
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(a) | (a != np.rint(a))
    if bad.any():
        raise DataError(f"{what}: {int(np.count_nonzero(bad))} non-integer label values "
                        f"(e.g. {float(a[bad].flat[0])}); labels must be integers")
    return a


def _list_cases(folder, what: str) -> dict[str, Path]:
    d = Path(folder)
    if not d.exists():
        raise DataError(f"{what} folder {d}: not found")
    if not d.is_dir():
        raise DataError(f"{what} folder {d}: not a folder")
    found: dict[str, Path] = {}
    for p in sorted(d.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        ext = next((e for e in _EXTENSIONS if p.name.endswith(e)), None)
        if ext is None:
            continue
        case = p.name[: -len(ext)]
        if not case:
            continue
        if case in found:
            raise DataError(f"case {case!r}: {what} folder {d} holds both {found[case].name} and {p.name}; "
                            "keep one")
        found[case] = p
    if not found:
        raise DataError(f"{what} folder {d}: no NIfTI files ({{case}}.nii.gz or {{case}}.nii)")
    return found


def _check_pairing(pred: dict[str, Path], gt: dict[str, Path], pred_dir, gt_dir) -> None:
    only_pred = sorted(set(pred) - set(gt))
    only_gt = sorted(set(gt) - set(pred))
    if not only_pred and not only_gt:
        return
    parts = []
    if only_gt:
        parts.append(f"{len(only_gt)} case(s) in ground truth {gt_dir} but not in predictions "
                     f"{pred_dir}: {_listing(only_gt)}")
    if only_pred:
        parts.append(f"{len(only_pred)} case(s) in predictions {pred_dir} but not in ground truth "
                     f"{gt_dir}: {_listing(only_pred)}")
    msg = "; ".join(parts)
    channel = re.compile(r"_\d{4}$")
    if any(channel.search(c) and channel.sub("", c) in (set(gt) | set(pred)) - {c}
           for c in only_pred + only_gt):
        msg += " (names ending in _0000 are nnU-Net image channels: pass the labels folder)"
    raise DataError(msg)


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f", ... ({len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else "")


def _read_pairs(cases, pred_files, gt_files, progress: bool) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield one checked ``(case, prediction, truth)`` at a time, in file orientation."""
    with tqdm(total=len(cases), desc="Dice", unit="case", disable=None if progress else True) as bar:
        for case in cases:
            pred, pred_affine = _read_label(pred_files[case], case, "prediction")
            truth, gt_affine = _read_label(gt_files[case], case, "ground truth")
            if pred.shape != truth.shape:
                raise DataError(f"case {case!r}: prediction {pred_files[case]} has shape {pred.shape}, "
                                f"ground truth {gt_files[case]} has shape {truth.shape}")
            diff = np.abs(pred_affine - gt_affine)
            if not np.all(diff <= AFFINE_ATOL):  # NaN counts as different
                worst = float(np.nanmax(diff)) if np.isfinite(diff).any() else float("nan")
                raise DataError(f"case {case!r}: prediction {pred_files[case]} and ground truth "
                                f"{gt_files[case]} have different affines (max abs difference {worst:.4g} "
                                f"> {AFFINE_ATOL}); the prediction must lie on the truth's voxel grid\n"
                                f"prediction affine:\n{pred_affine}\nground truth affine:\n{gt_affine}")
            yield case, pred, truth, tuple(np.linalg.norm(gt_affine[:3, :3], axis=0))
            del pred, truth
            bar.update(1)


def _read_label(path: Path, case: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A label file as stored (no reorientation), checked to hold integers, and its affine."""
    where = f"case {case!r}: {what} {path}"
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{where}: empty file (0 bytes)")
        img = nib.load(str(path), mmap=False)
    except DataError:
        raise
    except Exception as e:  # ImageFileError, OSError, zlib.error, EOFError, ...
        raise DataError(f"{where}: not a readable NIfTI file ({type(e).__name__}: {e})") from e
    shape = tuple(int(s) for s in img.shape)
    if len(shape) > 3 and all(s == 1 for s in shape[3:]):
        shape = shape[:3]  # (X, Y, Z, 1): a 3D label written as a one-frame series
    elif len(shape) != 3:
        raise DataError(f"{where}: label must be 3D, got shape {tuple(img.shape)}")
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            data = np.asanyarray(img.dataobj).reshape(shape)
        affine = np.array(img.affine, dtype=np.float64)
    except Exception as e:
        raise DataError(f"{where}: data cannot be read ({type(e).__name__}: {e}); "
                        "the file may be truncated or corrupt") from e
    return _as_label_map(data, where), affine


def _check_output(path, what: str) -> Path | None:
    """Fail before the (long) evaluation, not after it, when an output path cannot be a file."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what} {p}: is a folder, need a file path")
    if p.parent.exists() and not p.parent.is_dir():
        raise ConfigError(f"{what} {p}: parent {p.parent} is not a folder")
    return p


def _csv_text(result: SegmentationResult, classes: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case", *classes])
    for case, scores in result.cases.items():
        w.writerow([case, *(repr(float(scores[c])) for c in classes)])
    return buf.getvalue()
