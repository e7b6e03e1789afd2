"""``ahnet predict``: a checkpoint over a file or a folder of volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError
from .predictor import Predictor, find_cases, save_nifti_like


def file_spacing(volume) -> tuple[float, float, float]:
    """The voxel spacing in the file's own axis order (``Volume.spacing`` is in network order)."""
    spacing = [0.0, 0.0, 0.0]
    for network_axis, file_axis in enumerate(volume.axes):
        spacing[file_axis] = volume.spacing[network_axis]
    return tuple(spacing)


def predict(checkpoint: str | Path, inputs: str | Path, out_dir: str | Path, *, device: str = "auto",
            overlap: float = 0.5, batch_size: int = 4, mirror: bool = False, save_probabilities: bool = False,
            nms_radius_mm: float | Sequence[float] = 5.0, threshold: float = 0.1, top_k: int = 50,
            progress: bool = True) -> dict:
    """Predict every case of ``inputs`` into ``out_dir``.

    Segmentation: ``{case}.nii.gz`` labels (and ``{case}_probabilities.nii.gz`` with
    ``save_probabilities``). Detection: ``{case}_heatmap.nii.gz`` and one ``detections.csv`` with the
    local maxima of every heatmap (non-maximum suppression within ``nms_radius_mm``, scores at least
    ``threshold``, at most ``top_k`` per case): voxel indices of the input file's axes 0, 1, 2 and
    world coordinates in mm. Every output has the input's shape, affine and orientation.
    """
    from tqdm import tqdm

    from ..evaluation.detection import Detection, non_max_suppression, radius_from_mm, write_detections_csv

    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    predictor = Predictor(checkpoint, device=device, overlap=overlap, batch_size=batch_size, mirror=mirror)
    cases = find_cases(inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    detections, world = [], []
    for case, files in tqdm(cases.items(), desc="predict", unit="case", disable=not progress):
        result = predictor.predict_case(case, files)
        if result.task == "seg":
            save_nifti_like(result.labels, result.reference, out / f"{case}.nii.gz")
            if save_probabilities:
                save_nifti_like(result.output.astype(np.float32), result.reference, out / f"{case}_probabilities.nii.gz")
            continue
        heatmap = result.output[0].astype(np.float32)
        save_nifti_like(heatmap, result.reference, out / f"{case}_heatmap.nii.gz")
        radius = radius_from_mm(nms_radius_mm, file_spacing(result.reference))
        for x, y, z, score in non_max_suppression(heatmap, radius, threshold, top_k):
            detections.append(Detection(case, int(x), int(y), int(z), float(score)))
            world.append(tuple(float(v) for v in (result.reference.affine @ np.array([x, y, z, 1.0]))[:3]))
    if predictor.task == "det":
        write_detections_csv(out / "detections.csv", detections, world)
    return {"cases": len(cases), "task": predictor.task, "out": str(out), "detections": len(detections)}
