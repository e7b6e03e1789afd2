"""``ahnet demo``: the whole method on built-in synthetic data, on any machine.

For each task (CT-like segmentation, DBT-like detection): generate a training set and a held-out
test set (:mod:`ahnet.synth`), train MC-GCN on 3-slice stacks, transfer its encoder (Eq. 1-3),
train AH-Net in two stages (decoder with the encoder frozen, then jointly, §3.4), predict the
held-out volumes with both, evaluate them (Dice or FROC) and write the HTML report of AH-Net.
Beside the networks' numbers the demo prints a trivial baseline (every body voxel called liver;
random detections), so that learning is visible. The ``cpu`` scale takes about 7 minutes
on a 2-core CPU; on a GPU it uses the GPU (``device="auto"``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .experiments import AHNET, MCGCN, SCALES, Scale, run_arms, synthetic_data


def _baseline_seg(test_data: Path) -> dict:
    """Dice of calling every body voxel liver: what a network that learned nothing beyond "not
    air" would score."""
    from .data.volume import load_volume
    from .evaluation.segmentation import LITS_CLASSES, evaluate_arrays

    pairs = []
    for label in sorted((test_data / "labelsTr").glob("*.nii.gz")):
        case = label.name[: -len(".nii.gz")]
        image = load_volume(test_data / "imagesTr" / f"{case}_0000.nii.gz").array
        truth = load_volume(label, is_label=True).array
        pairs.append((case, (image > -500).astype(np.int64), truth))
    return evaluate_arrays(pairs, LITS_CLASSES).to_dict()


def _baseline_det(test_data: Path, detections_per_case: int, seed: int) -> dict:
    """FROC of as many detections as the networks may give, placed at random in the volume."""
    from .data.volume import load_volume
    from .evaluation.detection import Detection, froc, read_boxes_json

    boxes = read_boxes_json(test_data / "boxesTr.json")
    rng = np.random.default_rng(seed)
    found = []
    for case in boxes:
        shape = load_volume(test_data / "imagesTr" / f"{case}_0000.nii.gz").file_shape
        for _ in range(detections_per_case):
            x, y, z = (int(rng.integers(s)) for s in shape)
            found.append(Detection(case, x, y, z, float(rng.random())))
    return froc(found, boxes).to_dict()


def headline(task: str, metrics: dict) -> dict[str, float]:
    """The few numbers worth printing: Dice global per class, or FROC at 0.25, 1 and 4 FP/volume."""
    if task == "seg":
        return {f"{cls} Dice": float(v) for cls, v in metrics["dice_global"].items()}
    return {f"TPR@{k}FP": float(metrics["froc"].get(k, 0.0)) for k in ("0.25", "1", "4")}


def held_out(task: str, metrics: dict) -> str:
    """What the numbers stand on, in words: a TPR step is one lesion of this many."""
    if task == "seg":
        return f"{len(metrics['cases'])} held-out volumes"
    return f"{metrics['lesions']} held-out lesions in {metrics['volumes']} volumes"


def run_task(task: str, out: Path, scale: Scale, device: str = "auto", seed: int = 0, workers: int = 2,
             progress: bool = True) -> dict:
    """Data, MC-GCN, transfer, two-stage AH-Net, prediction, evaluation and report for one task."""
    from .report import detection_report, segmentation_report

    train_data, test_data = synthetic_data(task, out, scale, seed, progress)
    results = run_arms(task, (MCGCN, AHNET), scale, train_data, test_data, out, device=device, seed=seed,
                       workers=workers, progress=progress)
    predictions = out / "ah-net" / "predictions"
    if task == "seg":
        baseline = _baseline_seg(test_data)
        report = segmentation_report(test_data / "imagesTr", predictions, test_data / "labelsTr", out / "report.html",
                                     classes="lits", title="ahnet demo: CT-like liver and lesion segmentation (AH-Net)")
        baseline_name = "baseline: body = liver"
    else:
        baseline = _baseline_det(test_data, 10, seed)
        report = detection_report(predictions, test_data / "boxesTr.json", out / "report.html",
                                  title="ahnet demo: DBT-like lesion detection (AH-Net)")
        baseline_name = "baseline: random points"
    rows = {name: headline(task, r["metrics"]) for name, r in results.items()}
    rows[baseline_name] = headline(task, baseline)
    return {"task": task, "report": str(report), "headline": rows, "baseline": baseline,
            "held_out": held_out(task, baseline),
            "arms": {name: {k: r[k] for k in ("metrics", "train_s", "predict_s", "parameters")}
                     for name, r in results.items()}}


def run_demo(out: str | Path = "ahnet-demo", task: str = "both", scale: str | Scale = "cpu", device: str = "auto",
             seed: int = 0, workers: int = 2, progress: bool = True) -> dict:
    """Run the demo for ``task`` (``seg``, ``det`` or ``both``) into ``out``; returns a summary and
    writes it to ``out/summary.json``. ``scale`` is a name in :data:`SCALES` or a :class:`Scale`.
    Rerunning reuses the data and networks already finished."""
    if task not in ("seg", "det", "both"):
        raise ConfigError(f"task must be seg, det or both, got {task!r}")
    if not isinstance(scale, Scale) and scale not in SCALES:
        raise ConfigError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    sizes = scale if isinstance(scale, Scale) else SCALES[scale]
    out = Path(out)
    start = time.time()
    results = {}
    for name in (("seg", "det") if task == "both" else (task,)):
        results[name] = run_task(name, out / name, sizes, device, seed, workers, progress)
    summary = {"seconds": round(time.time() - start, 1), "scale": scale if isinstance(scale, str) else asdict(scale),
               "tasks": results}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
