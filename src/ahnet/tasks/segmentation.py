"""Segmentation (the paper's CT liver and lesion task, §4.2): label maps in, class probabilities out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .base import PredictionWriter, Task


class LabelFiles(PredictionWriter):
    """``{case}.nii.gz`` labels, and ``{case}_probabilities.nii.gz`` with ``save_probabilities``."""

    def names(self, case):
        return [f"{case}.nii.gz"] + ([f"{case}_probabilities.nii.gz"] if self.options.save_probabilities else [])

    def add(self, case, reference, prediction):
        from ..inference.predictor import save_nifti_like

        if prediction is None:
            return
        save_nifti_like(prediction.labels, prediction.reference, self.out / f"{case}.nii.gz")
        if self.options.save_probabilities:
            save_nifti_like(prediction.output.astype(np.float32), prediction.reference,
                            self.out / f"{case}_probabilities.nii.gz")


def lits_or_own_classes(data: Path) -> dict[str, tuple[int, ...]]:
    """LiTS's classes (liver = labels 1 and 2, Table 5) where a data set's labels are LiTS's, else one
    class per label."""
    from ..evaluation.segmentation import LITS_CLASSES, classes_from_labels

    labels = json.loads((data / "dataset.json").read_text())["labels"]
    return dict(LITS_CLASSES) if labels == {"background": 0, "liver": 1, "lesion": 2} else classes_from_labels(labels)


class SegmentationTask(Task):
    """Labels per voxel: cross-entropy (+ Dice), Dice global, label maps, Dice tables."""

    name = "seg"
    title = "segmentation"
    base_loss = "ce"
    # with cross-entropy alone the small lesion class was never predicted (lesion Dice 0 in the demo)
    dice_loss = True
    metric_name = "val dice"
    label_maps = True
    needs_labels = True
    needs_boxes = False
    phantoms = "CT-like liver and lesion segmentation"
    plot_name = "dice.png"

    def out_channels(self, labels):
        return len(labels)

    def annotation(self, case, info, reference, shape, spacing):
        from ..data.preprocessing import load_label

        return load_label(case, info, reference, spacing), []

    def target(self, shape, label, boxes, prep):
        return label

    def foreground(self, target, boxes, rng):
        from ..data.preprocessing import class_foreground

        return class_foreground(target, rng)

    def store(self, target, boxes, rng):
        """Labels in the smallest integer type that holds them; locations per class and connected component."""
        from ..data.preprocessing import class_components

        stored = target.astype(np.uint8 if target.max(initial=0) < 256 else np.int16)
        voxels, offsets, classes = class_components(stored, rng)
        arrays: dict[str, np.ndarray] = {}
        for k, (v, o) in enumerate(zip(voxels, offsets)):
            arrays[f"voxels_{k}"], arrays[f"offsets_{k}"] = v, o
        arrays["classes"] = np.asarray(classes, dtype=np.int64)
        return stored, arrays, {str(c): int((stored == c).sum()) for c in np.unique(stored)}

    def validate(self, model, batches, device, labels):
        """Dice global over the validation patches, of the data set's classes: the definition
        `ahnet evaluate seg` reports by default, so the best checkpoint is best by that metric."""
        from ..evaluation.segmentation import class_counts, classes_from_labels, dice_from_counts

        classes = classes_from_labels(labels)
        totals = {name: [0, 0, 0] for name in classes}
        for batch in batches:
            pred = model(batch["image"].to(device)).argmax(1).cpu()
            for name, counts in class_counts(pred, batch["target"], classes).items():
                totals[name] = [a + b for a, b in zip(totals[name], counts)]
        dice = {name: dice_from_counts(*counts) for name, counts in totals.items()}
        return {"val_metric": float(np.mean(list(dice.values()))), "val_dice": dice}

    def activate(self, output):
        return output.softmax(1)

    def writer(self, out, options):
        return LabelFiles(out, options)

    def evaluate(self, predictions, test):
        """Dice (LiTS classes where the labels are LiTS's), with each case's voxel counts."""
        from ..evaluation.segmentation import evaluate_segmentation

        return evaluate_segmentation(predictions, test / "labelsTr", classes=lits_or_own_classes(test),
                                     progress=False).to_dict()

    def report(self, predictions, test, out, title):
        from ..report import segmentation_report

        return segmentation_report(test / "imagesTr", predictions, test / "labelsTr", out,
                                   classes=lits_or_own_classes(test), title=title)

    def headline(self, metrics):
        """Dice global per class."""
        return {f"{cls} Dice": float(v) for cls, v in metrics["dice_global"].items()}

    def held_out(self, metrics):
        return f"{len(metrics['cases'])} held-out volumes"

    def baseline(self, test, seed):
        """Dice of calling every body voxel liver: what a network that learned nothing beyond "not
        air" would score."""
        from ..data.volume import load_volume
        from ..evaluation.segmentation import LITS_CLASSES, evaluate_arrays

        pairs = []
        for label in sorted((test / "labelsTr").glob("*.nii.gz")):
            case = label.name[: -len(".nii.gz")]
            image = load_volume(test / "imagesTr" / f"{case}_0000.nii.gz").array
            truth = load_volume(label, is_label=True).array
            pairs.append((case, (image > -500).astype(np.int64), truth))
        return "baseline: body = liver", evaluate_arrays(pairs, LITS_CLASSES).to_dict()

    def make_phantoms(self, out, **kwargs):
        from ..synth import make_seg_dataset

        return make_seg_dataset(out, **kwargs)

    def phantom_shape(self, scale):
        return scale.seg_shape

    def columns(self, metrics):
        from ..experiments import dice_columns

        return dice_columns(metrics)

    def plot(self, comparison, runs, path, title):
        from ..experiments import plot_dice_rows

        plot_dice_rows(comparison, path, title)
