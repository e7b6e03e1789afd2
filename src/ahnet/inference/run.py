"""``ahnet predict``: a checkpoint over a file or a folder of volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..data.volume import read_header
from ..errors import ConfigError, DataError
from ..evaluation.detection import NMS_RADIUS_MM, NMS_THRESHOLD, NMS_TOP_K
from ..fileio import ensure_output_dir, remove_stale_temps
from ..tasks import OutputOptions
from .predictor import Predictor, available_memory, find_cases


def file_spacing(volume) -> tuple[float, float, float]:
    """The voxel spacing in the file's own axis order (``Volume.spacing`` is in network order)."""
    spacing = [0.0, 0.0, 0.0]
    for network_axis, file_axis in enumerate(volume.axes):
        spacing[file_axis] = volume.spacing[network_axis]
    return tuple(spacing)


def predict(checkpoint: str | Path | Sequence[str | Path], inputs: str | Path, out_dir: str | Path, *,
            device: str = "auto", overlap: float = 0.5, batch_size: int = 4, mirror: bool = False, save_probabilities: bool = False,
            nms_radius_mm: float | Sequence[float] = NMS_RADIUS_MM, threshold: float | None = NMS_THRESHOLD,
            top_k: int = NMS_TOP_K,
            overwrite: bool = False, max_memory: int | None = None, largest_component: bool = False,
            progress: bool = True) -> dict:
    """Predict every case of ``inputs`` into ``out_dir`` with a checkpoint, or with the average of several
    (an ensemble, e.g. the fold models of ``ahnet train --folds K``: K times the time of one).

    Segmentation: ``{case}.nii.gz`` labels (and ``{case}_probabilities.nii.gz`` with
    ``save_probabilities``). Detection: ``{case}_heatmap.nii.gz`` and one ``detections.csv`` with the
    local maxima of every heatmap (non-maximum suppression within ``nms_radius_mm``, scores at least
    ``threshold`` - ``None``: any score -, at most ``top_k`` per case): voxel indices of the input file's axes 0, 1, 2 and
    world coordinates in mm. Every output has the input's shape, affine and orientation. With
    ``largest_component`` the labels keep only the largest connected foreground component.

    Before any prediction, every input's header is checked and its memory need estimated (a
    volume needing more than ``max_memory`` bytes, default the memory available, is refused with
    :class:`~ahnet.errors.ResourceError`), and the output folder must be writable. Outputs are
    written atomically, so a case whose outputs exist is complete: it is kept, not predicted again
    (a rerun after a crash finishes the remaining cases), unless ``overwrite``.
    """
    from tqdm import tqdm

    from ..evaluation.detection import radius_from_mm

    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    if max_memory is not None and not max_memory > 0:
        raise ConfigError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
    cases = find_cases(inputs)
    predictor = Predictor(checkpoint, device=device, overlap=overlap, batch_size=batch_size, mirror=mirror,
                          largest_component=largest_component)
    radius_from_mm(nms_radius_mm, (1.0, 1.0, 1.0))  # a bad radius fails now, not after the first case

    # Every header first (no voxel data): a broken or too large volume is reported before any work.
    limit, source = (max_memory, "allowed (max_memory)") if max_memory is not None else (available_memory(), "")
    headers = {}
    for case, files in cases.items():
        heads = [read_header(f) for f in files]
        channels = predictor.meta["image_channels"]
        if len(heads) != channels:
            raise DataError(f"case {case}: {len(heads)} channel file(s), the model was trained on {channels}")
        for h in heads[1:]:
            if h.file_shape != heads[0].file_shape:
                raise DataError(f"case {case}: channel {h.path} has shape {h.file_shape}, "
                                f"{heads[0].path} {heads[0].file_shape}")
        predictor.check_memory(case, heads, limit, source)
        headers[case] = heads

    out = ensure_output_dir(out_dir)
    writer = predictor.task.writer(out, OutputOptions(save_probabilities, nms_radius_mm, threshold, top_k))
    names = {case: writer.names(case) for case in cases}
    remove_stale_temps(out, [n for ns in names.values() for n in ns] + list(writer.run_files))
    skipped = 0
    for case, files in tqdm(cases.items(), desc="predict", unit="case", disable=None if progress else True):
        done = not overwrite and all((out / n).is_file() for n in names[case])
        skipped += done
        writer.add(case, headers[case][0], None if done else predictor.predict_case(case, files))
    return {"cases": len(cases), "task": predictor.task.name, "out": str(out), "detections": writer.finish(),
            "skipped": skipped}
