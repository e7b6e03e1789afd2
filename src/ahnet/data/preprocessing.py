"""How a case becomes network input: the one place that training, ``ahnet preprocess`` and ``predict`` call.

Reorientation (thick axis last, :mod:`.volume`), intensity normalisation per channel (:mod:`.intensity`),
resampling to the target spacing (in-plane, and along z when asked), the target (label map, or the
Eq. 5 heatmap of the boxes) and the foreground locations that positive patches are centred on (per class
and, for a stored case, per connected component: every lesion gets its share, not only the large ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from ..tasks import task_for
from .dataset import CaseFiles, DatasetInfo
from .intensity import Intensity
from .volume import Volume, boxes_to_network, load_volume

#: Foreground voxels remembered per class and case for positive sampling (as nnU-Net does).
MAX_FOREGROUND_SAMPLES = 10_000
#: Connected components smaller than this (voxels) are not drawn as lesions of their own: they are
#: label specks, and drawing each as often as a real lesion would spend patches on noise.
MIN_COMPONENT_VOXELS = 8


@dataclass
class PreparedCase:
    """A case in memory (or memory-mapped), in network orientation, ready for cropping.

    ``foreground[k]`` holds voxel indices of class ``k + 1`` (segmentation) or of box ``k`` (detection).
    ``components[k]``, where given, splits ``foreground[k]`` into connected components: offsets
    ``[0, e1, e2, ..., len]`` into it, the voxels of one component being contiguous.
    """

    name: str
    image: np.ndarray                 # (C, X, Y, Z) float32, normalised
    target: np.ndarray                # seg: (X, Y, Z) integer labels; det: (X, Y, Z) float32 heatmap
    foreground: list[np.ndarray]      # per foreground class (seg) or box (det): (K, 3) voxel indices
    boxes: list[tuple[int, ...]]      # det: boxes in network axes (after resampling)
    spacing: tuple[float, float, float]
    components: list[np.ndarray] | None = None


@dataclass(frozen=True)
class Preprocessing:
    """Everything that turns files into network inputs; stored in checkpoints for prediction.

    ``intensity`` is one :class:`Intensity` for every channel, or a tuple with one per channel.
    ``inplane_spacing`` resamples X and Y to that spacing (mm), ``z_spacing`` Z; None keeps an axis.
    """

    task: str                                   # the name of its task (ahnet.tasks)
    intensity: Intensity | tuple[Intensity, ...]
    inplane_spacing: float | None = None
    sigma_scale: float = 0.25                   # heatmap Gaussian width per box extent (Eq. 5)
    z_spacing: float | None = None

    def channel_intensity(self, channel: int) -> Intensity:
        if isinstance(self.intensity, Intensity):
            return self.intensity
        if channel >= len(self.intensity):
            raise DataError(f"channel {channel:04d}: the preprocessing knows {len(self.intensity)} channel(s)")
        return self.intensity[channel]

    def target_spacing(self, spacing: Sequence[float]) -> tuple[float, float, float]:
        """The spacing a volume of ``spacing`` (network order) has after resampling."""
        return (self.inplane_spacing or spacing[0], self.inplane_spacing or spacing[1], self.z_spacing or spacing[2])

    def resampled_shape(self, shape: Sequence[int], spacing: Sequence[float]) -> tuple[int, int, int]:
        return resampled_shape(shape, spacing, self.target_spacing(spacing))

    def image(self, volumes: Sequence[Volume]) -> np.ndarray:
        """The network input ``(C, X, Y, Z)`` float32 of a case's channel volumes (same grid)."""
        ref = volumes[0]
        image = np.stack([self.channel_intensity(c)(v.array) for c, v in enumerate(volumes)])
        return resample(image, ref.spacing, self.target_spacing(ref.spacing), label=False)

    def to_dict(self) -> dict:
        intensity = (self.intensity.to_dict() if isinstance(self.intensity, Intensity)
                     else [i.to_dict() for i in self.intensity])
        return {"task": self.task, "intensity": intensity, "inplane_spacing": self.inplane_spacing,
                "sigma_scale": self.sigma_scale, "z_spacing": self.z_spacing}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        raw = d["intensity"]
        intensity = Intensity.from_dict(raw) if isinstance(raw, dict) else tuple(Intensity.from_dict(i) for i in raw)
        return cls(d["task"], intensity, d.get("inplane_spacing"), d.get("sigma_scale", 0.25), d.get("z_spacing"))


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, int, int]:
    """The shape of a volume of ``shape`` at ``spacing`` after resampling to ``target`` (mm, per axis)."""
    return tuple(max(1, round(shape[i] * spacing[i] / target[i])) for i in range(3))


def resample(array: np.ndarray, spacing: Sequence[float], target: Sequence[float], label: bool) -> np.ndarray:
    """Resample ``(C, X, Y, Z)`` from ``spacing`` to ``target`` mm (trilinear, or nearest for labels)."""
    size = resampled_shape(array.shape[1:], spacing, target)
    if size == tuple(array.shape[1:]):
        return array
    t = torch.from_numpy(np.ascontiguousarray(array)).unsqueeze(0)
    if label:
        out = F.interpolate(t.float(), size=size, mode="nearest").to(t.dtype)
    else:
        out = F.interpolate(t.float(), size=size, mode="trilinear", align_corners=False)
    return out[0].numpy()


def resample_inplane(array: np.ndarray, spacing: Sequence[float], target: float, label: bool) -> np.ndarray:
    """Resample the X and Y axes of ``(C, X, Y, Z)`` to ``target`` mm; Z is left as it is."""
    return resample(array, spacing, (target, target, spacing[2]), label)


def load_case(case: CaseFiles, info: DatasetInfo | None, prep: Preprocessing) -> tuple[np.ndarray, np.ndarray | None,
                                                                                        list[tuple[int, ...]], tuple]:
    """Image, label map, boxes (network axes) and spacing after ``prep``; the task says which annotation
    a case has (segmentation: a label map and no boxes; detection: boxes and no label map)."""
    channels = [load_volume(p) for p in case.images]
    ref = channels[0]
    image = prep.image(channels)
    target_spacing = prep.target_spacing(ref.spacing)
    label, boxes = task_for(prep.task).annotation(case, info, ref, image.shape[1:], target_spacing)
    return image, label, boxes, target_spacing


def load_label(case: CaseFiles, info: DatasetInfo | None, ref: Volume, target_spacing: Sequence[float]) -> np.ndarray:
    """A case's label map on its image's grid at ``target_spacing``, its values checked against dataset.json's."""
    if case.label is None:
        raise DataError(f"case {case.name}: a segmentation case needs a label file")
    label = load_volume(case.label, is_label=True).array
    if label.shape != ref.array.shape:
        raise DataError(f"case {case.name}: label shape {label.shape} differs from image {ref.array.shape}")
    known = sorted(info.labels.values()) if info is not None else None
    if known and label.size and (label.min() < 0 or label.max() >= len(known)):
        unknown = [int(v) for v in np.unique(label) if not 0 <= v < len(known)]
        raise DataError(f"case {case.name}: {case.label}: label values {unknown[:10]} are not in "
                        f"dataset.json's labels {known}")
    return resample(label[None], ref.spacing, target_spacing, label=True)[0]


def network_boxes(case: CaseFiles, ref: Volume, shape: Sequence[int],
                  target_spacing: Sequence[float]) -> list[tuple[int, ...]]:
    """A case's boxes in network axes on the resampled grid of ``shape``."""
    scale = [ref.spacing[i] / target_spacing[i] for i in range(3)]
    return [_scale_box(b, scale, shape) for b in boxes_to_network(case.boxes or [], ref.axes)]


def prepare_case(case: CaseFiles, info: DatasetInfo | None, prep: Preprocessing, seed: int = 0) -> PreparedCase:
    """Load, reorient (thick axis last), normalise and resample one training case; its target and
    foreground are the task's."""
    image, label, boxes, spacing = load_case(case, info, prep)
    rng = np.random.default_rng([seed, 7919])
    task = task_for(prep.task)
    target = task.target(image.shape[1:], label, boxes, prep)
    return PreparedCase(case.name, image.astype(np.float32), target, task.foreground(target, boxes, rng), boxes,
                        spacing)


def class_foreground(label: np.ndarray, rng: np.random.Generator,
                     max_voxels: int = MAX_FOREGROUND_SAMPLES) -> list[np.ndarray]:
    """Per foreground class present: up to ``max_voxels`` of its voxel indices, sampled."""
    return [_sample_rows(np.argwhere(label == cls), max_voxels, rng) for cls in np.unique(label) if cls != 0]


def class_components(label: np.ndarray, rng: np.random.Generator,
                     max_voxels: int = MAX_FOREGROUND_SAMPLES) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Per foreground class present: sampled voxel indices grouped by connected component (26-connected),
    the component offsets, and the class values. Each component keeps up to ``max_voxels`` voxels, so a
    small lesion is as well represented as the liver it lies in."""
    from scipy import ndimage

    voxels, offsets, classes = [], [], []
    structure = np.ones((3, 3, 3), dtype=bool)
    for cls in np.unique(label):
        if cls == 0:
            continue
        parts, n = ndimage.label(label == cls, structure=structure)
        found = ndimage.find_objects(parts)
        groups = []
        for k, where in enumerate(found, start=1):
            if where is None:
                continue
            idx = np.argwhere(parts[where] == k) + np.array([s.start for s in where])
            groups.append((len(idx), _sample_rows(idx, max_voxels, rng)))
        kept = [g for size, g in groups if size >= MIN_COMPONENT_VOXELS] or [g for _, g in groups]
        voxels.append(np.concatenate(kept).astype(np.int32))
        offsets.append(np.cumsum([0] + [len(g) for g in kept]).astype(np.int64))
        classes.append(int(cls))
    return voxels, offsets, classes


class CaseLoader:
    """Picklable ``prepare_case`` with fixed arguments, for DataLoader workers of any start method."""

    def __init__(self, info: DatasetInfo, prep: Preprocessing, seed: int = 0):
        self.info, self.prep, self.seed = info, prep, seed

    def __call__(self, case: CaseFiles) -> PreparedCase:
        return prepare_case(case, self.info, self.prep, self.seed)


def _sample_rows(idx: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return idx[rng.choice(len(idx), n, replace=False)] if len(idx) > n else idx


def _scale_box(box: Sequence[int], scale: Sequence[float], shape: Sequence[int]) -> tuple[int, ...]:
    """A box (inclusive voxel indices) after the axes were resampled by ``scale``."""
    lo, hi = list(box[:3]), list(box[3:])
    for axis in range(3):
        if scale[axis] == 1.0:
            continue
        lo[axis] = math.floor(lo[axis] * scale[axis])
        hi[axis] = min(shape[axis] - 1, max(lo[axis], math.ceil((hi[axis] + 1) * scale[axis]) - 1))
    return (*lo, *hi)


def box_voxels(box: Sequence[int], shape: Sequence[int], rng: np.random.Generator, n: int = 64) -> np.ndarray:
    lo = np.maximum(np.array(box[:3]), 0)
    hi = np.minimum(np.array(box[3:]), np.array(shape) - 1)
    return rng.integers(lo, hi + 1, size=(n, 3))
