"""Online patch sampling (§4.1-4.2): random patches, a share of them positive, with augmentation.

Patches are drawn inside ``DataLoader`` workers while the network trains (asynchronous sampling).
Every sample is a pure function of ``(seed, rank, index)``, and :class:`EpochSampler` hands out the
indices of epoch ``e`` as ``e * samples ... (e + 1) * samples - 1``. So a run resumed from a
checkpoint sees exactly the patches it would have seen, whatever the number of workers (which stay
alive, with their cache of loaded cases, from epoch to epoch), and DDP ranks draw different patches.

* ``mode="3d"``: image ``(C, X, Y, Z)`` and target of the patch (label ``(X, Y, Z)`` int64 or
  heatmap ``(1, X, Y, Z)`` float32).
* ``mode="2d"``: a stack of three neighbouring slices ``(3C, X, Y)`` (channel-major: ``[c0 z-1,
  c0 z, c0 z+1, c1 z-1, ...]``, the layout ``transfer_2d_to_3d`` assumes) and the centre slice's
  target.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from ..errors import ConfigError, DataError
from .dataset import AFFINE_TOL, CaseFiles, DatasetInfo
from .heatmap import gaussian_heatmap
from .intensity import Intensity
from .volume import boxes_to_network, load_volume, read_header

#: Foreground voxels remembered per class and case for positive sampling (as nnU-Net does).
MAX_FOREGROUND_SAMPLES = 10_000


@dataclass
class PreparedCase:
    """A case in memory, in network orientation, ready for cropping."""

    name: str
    image: np.ndarray                 # (C, X, Y, Z) float32, normalised
    target: np.ndarray                # seg: (X, Y, Z) int64; det: (X, Y, Z) float32 heatmap
    foreground: list[np.ndarray]      # per foreground class (seg) or box (det): (K, 3) voxel indices
    boxes: list[tuple[int, ...]]      # det: boxes in network axes (after resampling)
    spacing: tuple[float, float, float]


@dataclass(frozen=True)
class Preprocessing:
    """Everything that turns files into network inputs; stored in checkpoints for prediction."""

    task: str                                   # "seg" or "det"
    intensity: Intensity
    inplane_spacing: float | None = None        # resample X and Y to this spacing (mm), or keep
    sigma_scale: float = 0.25                   # heatmap Gaussian width per box extent (Eq. 5)

    def to_dict(self) -> dict:
        return {"task": self.task, "intensity": {"mode": self.intensity.mode, "window": list(self.intensity.window)},
                "inplane_spacing": self.inplane_spacing, "sigma_scale": self.sigma_scale}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(d["task"], Intensity(d["intensity"]["mode"], tuple(d["intensity"]["window"])),
                   d.get("inplane_spacing"), d.get("sigma_scale", 0.25))


def resample_inplane(array: np.ndarray, spacing: Sequence[float], target: float, label: bool) -> np.ndarray:
    """Resample the X and Y axes of ``(C, X, Y, Z)`` to ``target`` mm; Z is left as it is."""
    size = [max(1, round(array.shape[1 + i] * spacing[i] / target)) for i in range(2)]
    if size == list(array.shape[1:3]):
        return array
    t = torch.from_numpy(np.ascontiguousarray(array)).unsqueeze(0)
    out_size = (*size, array.shape[3])
    if label:
        out = F.interpolate(t.float(), size=out_size, mode="nearest").to(t.dtype)
    else:
        out = F.interpolate(t, size=out_size, mode="trilinear", align_corners=False)
    return out[0].numpy()


def prepare_case(case: CaseFiles, info: DatasetInfo, prep: Preprocessing, seed: int = 0) -> PreparedCase:
    """Load, reorient (thick axis last), normalise and optionally resample one training case."""
    channels = [load_volume(p) for p in case.images]
    ref = channels[0]
    image = np.stack([prep.intensity(v.array) for v in channels])
    spacing = tuple(ref.spacing)
    rng = np.random.default_rng([seed, 7919])
    boxes: list[tuple[int, ...]] = []
    if prep.task == "seg":
        if case.label is None:
            raise DataError(f"case {case.name}: a segmentation case needs a label file")
        target = load_volume(case.label, is_label=True).array
        if target.shape != image.shape[1:]:
            raise DataError(f"case {case.name}: label shape {target.shape} differs from image {image.shape[1:]}")
        known = sorted(info.labels.values()) if info is not None else None
        unknown = []
        if known and target.size and (target.min() < 0 or target.max() >= len(known)):
            unknown = [int(v) for v in np.unique(target) if not 0 <= v < len(known)]
        if unknown:
            raise DataError(f"case {case.name}: {case.label}: label values {unknown[:10]} are not in "
                            f"dataset.json's labels {known}")
    if prep.inplane_spacing:
        scale = [spacing[i] / prep.inplane_spacing for i in range(2)]
        image = resample_inplane(image, spacing, prep.inplane_spacing, label=False)
        if prep.task == "seg":
            target = resample_inplane(target[None], spacing, prep.inplane_spacing, label=True)[0]
        spacing = (prep.inplane_spacing, prep.inplane_spacing, spacing[2])
    else:
        scale = [1.0, 1.0]
    if prep.task == "seg":
        foreground = []
        for cls in np.unique(target):
            if cls == 0:
                continue
            idx = np.argwhere(target == cls)
            if len(idx) > MAX_FOREGROUND_SAMPLES:
                idx = idx[rng.choice(len(idx), MAX_FOREGROUND_SAMPLES, replace=False)]
            foreground.append(idx)
    else:
        boxes = [_scale_box(b, scale, image.shape[1:]) for b in boxes_to_network(case.boxes or [], ref.axes)]
        target = gaussian_heatmap(image.shape[1:], boxes, sigma_scale=prep.sigma_scale)
        foreground = [_box_voxels(b, image.shape[1:], rng) for b in boxes]
    return PreparedCase(case.name, image.astype(np.float32), target, foreground, boxes, spacing)


class CaseLoader:
    """Picklable ``prepare_case`` with fixed arguments, for DataLoader workers of any start method."""

    def __init__(self, info: DatasetInfo, prep: Preprocessing, seed: int = 0):
        self.info, self.prep, self.seed = info, prep, seed

    def __call__(self, case: CaseFiles) -> PreparedCase:
        return prepare_case(case, self.info, self.prep, self.seed)


def _scale_box(box: Sequence[int], scale: Sequence[float], shape: Sequence[int]) -> tuple[int, ...]:
    """A box (inclusive voxel indices) after the X and Y axes were resampled by ``scale``."""
    lo, hi = list(box[:3]), list(box[3:])
    for axis in range(2):
        lo[axis] = math.floor(lo[axis] * scale[axis])
        hi[axis] = min(shape[axis] - 1, max(lo[axis], math.ceil((hi[axis] + 1) * scale[axis]) - 1))
    return (*lo, *hi)


def _box_voxels(box: Sequence[int], shape: Sequence[int], rng: np.random.Generator, n: int = 64) -> np.ndarray:
    lo = np.maximum(np.array(box[:3]), 0)
    hi = np.minimum(np.array(box[3:]), np.array(shape) - 1)
    return rng.integers(lo, hi + 1, size=(n, 3))


def check_patch_fits(shape: Sequence[int], patch: Sequence[int], case: str, max_pad_fraction: float = 0.5) -> None:
    """Volumes smaller than the patch are zero-padded, but by at most ``max_pad_fraction`` of it."""
    for axis, (s, p) in enumerate(zip(shape, patch)):
        if s < p * (1 - max_pad_fraction):
            raise DataError(
                f"case {case}: axis {'XYZ'[axis]} has {s} voxels, less than half the patch's {p}; "
                f"padding would make the patch mostly empty. Use a patch of at most {s * 2} along {'XYZ'[axis]}"
            )


def check_cases(cases: Sequence[CaseFiles], patch: Sequence[int], mode: str = "3d",
                inplane_spacing: float | None = None) -> None:
    """Check every case from its file headers alone, before training starts (cheap: no voxel data
    is read): readable 3D NIfTI files with a valid voxel size, channels and label on one grid (same
    shape, affine and voxel size), boxes inside the volume, and a volume that fits the patch.
    Raises :class:`DataError` naming the case, the file and the rule broken."""
    patch = (patch[0], patch[1], 3) if mode == "2d" else tuple(patch)
    for case in cases:
        heads = [read_header(p) for p in case.images]
        ref = heads[0]
        others = [(f"channel {ch:04d}", h) for ch, h in enumerate(heads[1:], start=1)]
        if case.label is not None:
            others.append(("label", read_header(case.label)))
        for what, h in others:
            where = f"case {case.name}: {what} {h.path}"
            if h.file_shape != ref.file_shape:
                raise DataError(f"{where}: shape {h.file_shape} differs from the image {ref.path} shape "
                                f"{ref.file_shape}")
            if not np.allclose(h.affine, ref.affine, rtol=0, atol=AFFINE_TOL):
                diff = float(np.abs(h.affine - ref.affine).max())
                raise DataError(f"{where}: affine differs from the image {ref.path} affine (max difference "
                                f"{diff:.3g}, tolerance {AFFINE_TOL}): the two are not on the same grid")
            if not np.allclose(h.spacing, ref.spacing, rtol=1e-4, atol=0):
                raise DataError(f"{where}: voxel size {h.spacing} differs from the image's {ref.spacing}")
        for k, box in enumerate(case.boxes or []):
            if any(box[3 + i] >= ref.file_shape[i] for i in range(3)):
                raise DataError(f"case {case.name}: box {k} {list(box)} lies outside the volume {ref.path} "
                                f"(file shape {ref.file_shape}, box indices are inclusive)")
        shape = list(ref.shape)
        if inplane_spacing:
            sp = ref.network_spacing
            shape[:2] = [max(1, round(shape[i] * sp[i] / inplane_spacing)) for i in range(2)]
        try:
            check_patch_fits(shape, patch, case.name)
        except DataError as e:
            raise DataError(f"{e} ({ref.path}: volume {tuple(shape)} in network orientation, patch "
                            f"{tuple(patch)})") from None


def crop(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Crop the last three axes at ``start`` (may lie outside the array), zero-padding outside."""
    spatial = array.shape[-3:]
    src, dst = [], []
    for s, p, n in zip(start, size, spatial):
        lo, hi = max(s, 0), min(s + p, n)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - s, lo - s + max(hi - lo, 0)))
    out = np.zeros(array.shape[:-3] + tuple(size), dtype=array.dtype)
    out[(..., *dst)] = array[(..., *src)]
    return out


class Augment:
    """§4.2: rotation within +-``max_degrees`` in the xy plane, scaling within +-``max_scale`` on
    every axis and mirroring in xy, identical on image and target (MONAI's ``Affine``)."""

    def __init__(self, max_degrees: float = 20.0, max_scale: float = 0.2, scale_z: bool = True):
        self.max_radians = math.radians(max_degrees)
        self.max_scale = max_scale
        self.scale_z = scale_z  # off for 3-slice stacks: scaling z would blend the three slices

    def __call__(self, image: np.ndarray, target: np.ndarray, label: bool, rng: np.random.Generator):
        from monai.transforms import Affine

        angle = float(rng.uniform(-self.max_radians, self.max_radians))
        scale = [float(s) for s in 1 + rng.uniform(-self.max_scale, self.max_scale, size=3)]
        if not self.scale_z:
            scale[2] = 1.0
        flips = [axis for axis in (0, 1) if rng.random() < 0.5]
        size = image.shape[-3:]

        def warp(x: np.ndarray, mode: str, padding: str) -> np.ndarray:
            affine = Affine(rotate_params=(0.0, 0.0, angle), scale_params=scale, spatial_size=size,
                            mode=mode, padding_mode=padding, image_only=True)
            out = affine(torch.from_numpy(np.ascontiguousarray(x)))
            return np.asarray(out.as_tensor() if hasattr(out, "as_tensor") else out)

        image = warp(image, "bilinear", "border")
        target = warp(target.astype(np.float32), "nearest" if label else "bilinear", "zeros")
        if label:
            target = np.rint(target).astype(np.int64)
        for axis in flips:
            image = np.flip(image, axis=1 + axis)
            target = np.flip(target, axis=1 + axis)
        return np.ascontiguousarray(image), np.ascontiguousarray(target)


class EpochSampler(Sampler[int]):
    """Indices ``epoch * samples`` to ``(epoch + 1) * samples - 1``: each epoch new, reproducible patches."""

    def __init__(self, samples: int):
        self.samples, self.epoch, self.start = samples, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch ``epoch`` from its sample ``start`` on (an epoch resumed in the middle)."""
        if not 0 <= start <= self.samples:
            raise ConfigError(f"start must be within [0, {self.samples}], got {start}")
        self.epoch, self.start = epoch, start

    def __iter__(self):
        return iter(range(self.epoch * self.samples + self.start, (self.epoch + 1) * self.samples))

    def __len__(self) -> int:
        return self.samples - self.start


class PatchDataset(Dataset):
    """``samples`` random patches per epoch from ``cases``; see the module docstring.

    Args:
        cases: training cases.
        load: turns a :class:`CaseFiles` into a :class:`PreparedCase` (cached per worker).
        patch: patch size ``(X, Y, Z)``; in 2D mode ``Z`` is ignored (three slices are taken).
        samples: patches per epoch (for this rank); the length of the data set.
        positive_ratio: share of patches centred on foreground (§4.1: 70 %).
        mode: ``"3d"`` or ``"2d"``.
        augment: apply :class:`Augment` (§4.2).
        cache_size: prepared cases kept in memory per worker.
    """

    def __init__(self, cases: Sequence[CaseFiles], load: Callable[[CaseFiles], PreparedCase],
                 patch: Sequence[int], samples: int, seed: int = 0, rank: int = 0,
                 positive_ratio: float = 0.7, mode: str = "3d", augment: bool = True, cache_size: int = 8):
        if not cases:
            raise ConfigError("no training cases to sample patches from")
        if mode not in ("2d", "3d"):
            raise ConfigError(f"mode must be '2d' or '3d', got {mode!r}")
        if not 0.0 <= positive_ratio <= 1.0:
            raise ConfigError(f"positive_ratio must be within [0, 1], got {positive_ratio}")
        self.cases, self.load, self.samples = list(cases), load, samples
        self.patch = (patch[0], patch[1], 3) if mode == "2d" else tuple(patch)
        self.seed, self.rank = seed, rank
        self.positive_ratio, self.mode = positive_ratio, mode
        self.augment = Augment(scale_z=mode == "3d") if augment else None
        self.cache_size = cache_size
        self._cache: OrderedDict[str, PreparedCase] = OrderedDict()

    def __len__(self) -> int:
        return self.samples

    def case(self, case: CaseFiles) -> PreparedCase:
        if case.name in self._cache:
            self._cache.move_to_end(case.name)
            return self._cache[case.name]
        prepared = self.load(case)
        check_patch_fits(prepared.image.shape[1:], self.patch, case.name)
        self._cache[case.name] = prepared
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return prepared

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """The patch number ``index`` of this run (any non-negative integer, see EpochSampler)."""
        rng = np.random.default_rng([self.seed, self.rank, index])
        return self.sample(rng)

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        positive = rng.random() < self.positive_ratio
        prepared = self.case(self.cases[int(rng.integers(len(self.cases)))])
        if positive and not prepared.foreground:
            positive = False  # a negative volume: nothing to centre on
        shape = prepared.image.shape[1:]
        if positive:
            group = prepared.foreground[int(rng.integers(len(prepared.foreground)))]
            centre = group[int(rng.integers(len(group)))]
            # Jitter so that lesions are not always in the middle of the patch.
            jitter = [int(rng.integers(-(p // 4), p // 4 + 1)) for p in self.patch]
            start = [int(c) - p // 2 + j for c, p, j in zip(centre, self.patch, jitter)]
            if self.mode == "2d":
                start[2] = int(centre[2]) - 1
        else:
            start = [int(rng.integers(min(0, s - p), max(0, s - p) + 1)) for s, p in zip(shape, self.patch)]
            if self.mode == "2d":
                start[2] = int(rng.integers(0, shape[2])) - 1
        # Keep the patch inside the volume where it fits; pad only where the volume is smaller.
        for axis in range(3 if self.mode == "3d" else 2):
            s, p = shape[axis], self.patch[axis]
            start[axis] = min(max(start[axis], 0), s - p) if s >= p else (s - p) // 2
        image = crop(prepared.image, start, self.patch)
        target = crop(prepared.target, start, self.patch)
        label = prepared.target.dtype.kind in "iu"
        if self.augment is not None:
            image, target = self.augment(image, target[None], label, rng)
            target = target[0]
        if self.mode == "2d":
            image = image.transpose(0, 3, 1, 2).reshape(-1, *self.patch[:2])  # (3C, X, Y)
            target = target[..., 1]
        target_t = torch.from_numpy(np.ascontiguousarray(target))
        if not label:
            target_t = target_t.float().unsqueeze(0)
        return {"image": torch.from_numpy(np.ascontiguousarray(image)).float(), "target": target_t}
