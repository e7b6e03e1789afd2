"""Detection (the paper's DBT lesion task, §4.1): boxes in, a Gaussian heatmap (Eq. 5) out, FROC."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import PredictionWriter, Task


class HeatmapFiles(PredictionWriter):
    """``{case}_heatmap.nii.gz`` per case and one ``detections.csv`` of the heatmaps' local maxima (see
    :func:`ahnet.inference.predict`). A kept heatmap is read back: the file lists every case's detections."""

    run_files = ("detections.csv",)

    def __init__(self, out, options):
        super().__init__(out, options)
        self.detections: list = []
        self.world: list[tuple[float, ...]] = []

    def names(self, case):
        return [f"{case}_heatmap.nii.gz"]

    def add(self, case, reference, prediction):
        from ..evaluation.detection import Detection, non_max_suppression, radius_from_mm
        from ..inference.predictor import save_nifti_like

        path = self.out / self.names(case)[0]
        if prediction is None:
            heatmap = read_heatmap(path, reference)
        else:
            heatmap = prediction.output[0].astype(np.float32)
            save_nifti_like(heatmap, prediction.reference, path)
        radius = radius_from_mm(self.options.nms_radius_mm, reference.spacing)
        for x, y, z, score in non_max_suppression(heatmap, radius, self.options.threshold, self.options.top_k):
            self.detections.append(Detection(case, int(x), int(y), int(z), float(score)))
            self.world.append(tuple(float(v) for v in (reference.affine @ np.array([x, y, z, 1.0]))[:3]))

    def finish(self):
        from ..evaluation.detection import write_detections_csv

        write_detections_csv(self.out / "detections.csv", self.detections, self.world)
        return len(self.detections)


def read_heatmap(path: Path, reference) -> np.ndarray:
    """A heatmap written by an earlier run, in file orientation, checked against its input's header."""
    import nibabel as nib

    try:
        heatmap = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))
    except Exception as err:
        raise DataError(f"{path}: an earlier output cannot be read ({type(err).__name__}); delete it or "
                        "use --overwrite") from None
    if heatmap.shape != reference.file_shape:
        raise DataError(f"{path}: an earlier output of shape {heatmap.shape} does not fit its input {reference.path} "
                        f"{reference.file_shape}; delete it or use --overwrite")
    return heatmap


#: False positives per validation patch at which :meth:`DetectionTask.validate` reads the TPR (the rates
#: of LUNA16's competition performance metric, per patch instead of per scan).
VALIDATION_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


#: Lesions of a heatmap are its connected regions above this level (an Eq. 5 Gaussian falls to it at
#: 3 sigma, beyond its box's faces at 2 sigma): far enough out to keep each lesion in one piece.
LESION_FLOOR = 0.01


def lesion_boxes(heatmap: np.ndarray) -> list[list[int]]:
    """The inclusive boxes ``[x0, y0, z0, x1, y1, z1]`` that an Eq. 5 heatmap was made from (2D maps are
    one slice, z = 0), recovered per lesion: along each axis, where the lesion's maximum over the other
    axes exceeds exp(-2) of its peak - exactly the box's extent at sigma = box / 4 (the default
    ``--sigma-scale``), since a Gaussian's profile falls to exp(-2) at 2 sigma. In a slice or a patch through part of a lesion, that is the part
    of the box it holds; a slice outside a box (its peak below exp(-2)) holds no lesion."""
    from scipy import ndimage

    heatmap = heatmap[..., None] if heatmap.ndim == 2 else heatmap
    labels, _ = ndimage.label(heatmap >= LESION_FLOOR)
    boxes = []
    for k, region in enumerate(ndimage.find_objects(labels), start=1):
        values = np.where(labels[region] == k, heatmap[region], 0.0)
        peak = float(values.max())
        if peak <= math.exp(-2):
            continue
        box = []
        for axis in range(3):
            profile = values.max(axis=tuple(a for a in range(3) if a != axis))
            # (1 + 1e-4): a one-voxel extent's Gaussian (sigma 0.5) reaches exp(-2) exactly at its neighbours
            inside = np.flatnonzero(profile > math.exp(-2) * peak * (1 + 1e-4))
            box.append((region[axis].start + inside[0], region[axis].start + inside[-1]))
        boxes.append([int(lo) for lo, _ in box] + [int(hi) for _, hi in box])
    return boxes


def patch_maxima(output: np.ndarray, spacing, radius_mm, top_k: int) -> list[tuple[int, int, int, float]]:
    """The local maxima of one patch's output (2D: one slice) within ``radius_mm``, every score ranked."""
    from ..evaluation.detection import non_max_suppression, radius_from_mm

    output = output[..., None] if output.ndim == 2 else output
    return non_max_suppression(output, radius_from_mm(radius_mm, spacing), threshold=None,
                               top_k=top_k)


class DetectionTask(Task):
    """Boxes per case: the Eq. 5 heatmap regressed with L2, validated and evaluated by FROC."""

    name = "det"
    title = "detection"
    base_loss = "l2"
    dice_loss = False
    metric_name = "val mean TPR at 1/8-8 FP/patch"
    label_maps = False
    needs_labels = False
    needs_boxes = True
    phantoms = "DBT-like lesion detection"
    plot_name = "froc.png"
    #: random points per volume of the baseline: as many as the experiments' networks may give (top_k)
    BASELINE_DETECTIONS = 10

    def out_channels(self, labels):
        return 1

    def annotation(self, case, info, reference, shape, spacing):
        from ..data.preprocessing import network_boxes

        return None, network_boxes(case, reference, shape, spacing)

    def target(self, shape, label, boxes, prep):
        from ..data.heatmap import gaussian_heatmap

        return gaussian_heatmap(shape, boxes, sigma_scale=prep.sigma_scale)

    def foreground(self, target, boxes, rng):
        from ..data.preprocessing import box_voxels

        return [box_voxels(b, target.shape, rng) for b in boxes]

    def store(self, target, boxes, rng):
        """The heatmap as it is; sampled voxels of each box (one class, no components)."""
        from ..data.preprocessing import box_voxels

        arrays = {f"voxels_{k}": box_voxels(box, target.shape, rng).astype(np.int32) for k, box in enumerate(boxes)}
        arrays["classes"] = np.zeros(len(boxes), dtype=np.int64)
        return target, arrays, {}

    def validate(self, model, batches, device, labels):
        """The FROC of the validation patches, scored as ``ahnet evaluate det`` scores volumes (§4.1): the
        local maxima of each patch's output (non-maximum suppression as ``ahnet predict`` does it, every
        score ranked) against the patch's lesions, the boxes its target was made from (:func:`lesion_boxes`).
        ``val_metric`` is the mean TPR at :data:`VALIDATION_RATES` false positives per patch, a graded
        number where the TPR at one rate stays 0 for many epochs."""
        from ..evaluation.detection import NMS_RADIUS_MM, NMS_TOP_K, Detection, froc

        detections, boxes = [], {}
        for batch in batches:
            outputs = model(batch["image"].to(device)).float().cpu()[:, 0].numpy()
            for output, target, spacing in zip(outputs, batch["target"][:, 0].numpy(), batch["spacing"].tolist()):
                patch = str(len(boxes))
                boxes[patch] = lesion_boxes(target)
                for x, y, z, score in patch_maxima(output, spacing, NMS_RADIUS_MM, NMS_TOP_K):
                    detections.append(Detection(patch, x, y, z, score))
        result = froc(detections, boxes, VALIDATION_RATES)
        return {"val_metric": float(np.mean(list(result.froc.values()))), "val_froc": result.froc,
                "val_lesions": result.lesions}

    def writer(self, out, options):
        return HeatmapFiles(out, options)

    def predict_note(self, result):
        return f", {result['detections']} detection(s) in detections.csv"

    def evaluate(self, predictions, test):
        """FROC of ``detections.csv``, with each volume's findings."""
        from ..evaluation.detection import case_findings, froc, read_boxes_json, read_detections_csv

        detections, boxes = read_detections_csv(predictions / "detections.csv"), read_boxes_json(test / "boxesTr.json")
        return froc(detections, boxes).to_dict() | {"cases": case_findings(detections, boxes)}

    def report(self, predictions, test, out, title):
        from ..report import detection_report

        return detection_report(predictions, test / "boxesTr.json", out, title=title)

    def headline(self, metrics):
        """FROC at 0.25, 1 and 4 false positives per volume."""
        return {f"TPR@{k}FP": float(metrics["froc"].get(k, 0.0)) for k in ("0.25", "1", "4")}

    def held_out(self, metrics):
        """A TPR step is one lesion of this many."""
        return f"{metrics['lesions']} held-out lesions in {metrics['volumes']} volumes"

    def baseline(self, test, seed):
        """FROC of as many detections as the networks may give, placed at random in the volume."""
        from ..data.volume import load_volume
        from ..evaluation.detection import Detection, froc, read_boxes_json

        boxes = read_boxes_json(test / "boxesTr.json")
        rng = np.random.default_rng(seed)
        found = []
        for case in boxes:
            shape = load_volume(test / "imagesTr" / f"{case}_0000.nii.gz").file_shape
            for _ in range(self.BASELINE_DETECTIONS):
                x, y, z = (int(rng.integers(s)) for s in shape)
                found.append(Detection(case, x, y, z, float(rng.random())))
        return "baseline: random points", froc(found, boxes).to_dict()

    def make_phantoms(self, out, **kwargs):
        from ..synth import make_det_dataset

        return make_det_dataset(out, **kwargs)

    def phantom_shape(self, scale):
        return scale.det_shape

    def columns(self, metrics):
        from ..experiments import froc_columns

        return froc_columns()

    def plot(self, comparison, runs, path, title):
        from ..experiments import plot_froc_rows

        plot_froc_rows(comparison, runs, path, title)
