"""Online patch sampling (§4.1-4.2): random patches, a share of them positive, with augmentation.

Patches are drawn inside ``DataLoader`` workers while the network trains (asynchronous sampling).
Every sample is a pure function of ``(seed, rank, index)``, and :class:`EpochSampler` hands out the
indices of epoch ``e`` as ``e * samples ... (e + 1) * samples - 1``. So a run resumed from a
checkpoint sees exactly the patches it would have seen, whatever the number of workers (which stay
alive, with their cache of loaded cases, from epoch to epoch: :class:`ahnet.training.patch_stream.PatchStream`),
and DDP ranks draw different patches.

* ``mode="3d"``: image ``(C, X, Y, Z)`` and target of the patch (label ``(X, Y, Z)`` int64 or
  heatmap ``(1, X, Y, Z)`` float32).
* ``mode="2d"``: a stack of three neighbouring slices ``(3C, X, Y)`` (channel-major: ``[c0 z-1,
  c0 z, c0 z+1, c1 z-1, ...]``, the layout ``transfer_2d_to_3d`` assumes) and the centre slice's
  target.

Each sample also carries ``spacing``, the voxel size in mm of its grid (the prepared case's), which the
detection validation needs to suppress non-maxima over a distance in mm.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import ConfigError, DataError
from .dataset import AFFINE_TOL, CaseFiles
from .preprocessing import (  # noqa: F401  (the names training imported from here before)
    CaseLoader, PreparedCase, Preprocessing, prepare_case, resample_inplane, resampled_shape)
from .volume import read_header


def check_patch_fits(shape: Sequence[int], patch: Sequence[int], case: str, max_pad_fraction: float = 0.5) -> None:
    """Volumes smaller than the patch are zero-padded, but by at most ``max_pad_fraction`` of it."""
    for axis, (s, p) in enumerate(zip(shape, patch)):
        if s < p * (1 - max_pad_fraction):
            raise DataError(
                f"case {case}: axis {'XYZ'[axis]} has {s} voxels, less than half the patch's {p}; "
                f"padding would make the patch mostly empty. Use a patch of at most {s * 2} along {'XYZ'[axis]}"
            )


def check_cases(cases: Sequence[CaseFiles], patch: Sequence[int], mode: str = "3d",
                inplane_spacing: float | None = None, z_spacing: float | None = None) -> None:
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
        if inplane_spacing or z_spacing:
            sp = ref.network_spacing
            shape = list(resampled_shape(shape, sp, (inplane_spacing or sp[0], inplane_spacing or sp[1],
                                                     z_spacing or sp[2])))
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


class IntensityAugment:
    """Appearance changes between scans (contrast phase, scanner, dose), beyond the paper's
    geometric ones. Per patch and channel:

    * with probability ``p_remap``, another enhancement phase: a random monotone intensity curve
      through ``remap_points`` control points between the patch's minimum and maximum (MONAI's
      ``RandHistogramShift``). Unlike a shift, it changes the tissues' contrast against each other: a
      liver at 100-140 HU in portal-venous training scans is at 45 HU in a non-contrast one, next to
      muscle at 50 HU, and no shift of the whole patch shows that (experiments/RESULTS.md).
    * each with probability ``p``, a contrast change by a factor within ``contrast`` about the
      foreground's mean, a shift by up to +-``shift`` foreground standard deviations, and (with
      probability ``0.3 p``) Gaussian noise of up to ``noise`` of that deviation (nnU-Net's brightness,
      contrast and noise transforms). The shift reaches a contrast phase's change of the liver (about
      100 HU between portal-venous and non-contrast scans, 3 deviations of a liver's values).
    * last, the values are clipped to ``value_ranges[c]`` (the normalisation's, e.g. an HU window's
      ends), as the window clips a scan whose tissues are that much darker or brighter.

    The statistics are the case's own (:func:`foreground_statistics`), so the change is the same in
    HU whatever the normalisation (a window to [0, 1] or a z-score).
    """

    def __init__(self, shift: float = 3.0, contrast: tuple[float, float] = (0.5, 1.5), noise: float = 0.1,
                 p: float = 0.5, remap_points: tuple[int, int] = (4, 8), p_remap: float = 0.3,
                 value_ranges: Sequence[tuple[float, float]] = ()):
        if min(remap_points) < 3:
            raise ConfigError(f"remap_points must be at least 3, got {remap_points}")
        self.shift, self.contrast, self.noise, self.p = shift, contrast, noise, p
        self.remap_points, self.p_remap = remap_points, p_remap
        self.value_ranges = tuple(value_ranges)

    def __call__(self, image: np.ndarray, stats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        image = image.astype(np.float32, copy=True)
        for c, (mean, std) in enumerate(stats):
            if rng.random() < self.p_remap:
                image[c] = self._remap(image[c], rng)
            if rng.random() < self.p:
                image[c] = (image[c] - mean) * np.float32(rng.uniform(*self.contrast)) + mean
            if rng.random() < self.p:
                image[c] += np.float32(rng.uniform(-self.shift, self.shift) * std)
            if rng.random() < self.p * 0.3:
                sigma = float(rng.uniform(0, self.noise)) * std
                image[c] += rng.normal(0.0, sigma, size=image[c].shape).astype(np.float32)
            if c < len(self.value_ranges):
                np.clip(image[c], *self.value_ranges[c], out=image[c])
        return image

    def _remap(self, channel: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from monai.transforms import RandHistogramShift

        remap = RandHistogramShift(num_control_points=self.remap_points, prob=1.0)
        remap.set_random_state(seed=int(rng.integers(2 ** 31)))
        return np.asarray(remap(channel), dtype=np.float32)


def foreground_statistics(prepared: PreparedCase, max_samples: int = 20000) -> np.ndarray:
    """Mean and standard deviation of each channel ``(C, 2)`` over the case's foreground voxels (the whole
    volume where it has none), from at most ``max_samples`` evenly spaced voxels."""
    image = prepared.image
    voxels = np.concatenate(prepared.foreground) if prepared.foreground else np.empty((0, 3), np.int64)
    if len(voxels):
        voxels = voxels[:: max(1, len(voxels) // max_samples)]
        values = image[:, voxels[:, 0], voxels[:, 1], voxels[:, 2]]
    else:
        flat = image.reshape(image.shape[0], -1)
        values = flat[:, :: max(1, flat.shape[1] // max_samples)]
    values = np.asarray(values, dtype=np.float64)
    return np.stack([values.mean(1), np.maximum(values.std(1), 1e-6)], axis=1)


class EpochSampler(Sampler[int]):
    """Indices ``epoch * samples`` to ``(epoch + epochs) * samples - 1``: each epoch new, reproducible
    patches. A run iterates once over all the epochs it has left, so its DataLoader workers (and their
    cache of loaded cases) live from the first epoch to the last."""

    def __init__(self, samples: int):
        self.samples, self.epoch, self.start, self.epochs = samples, 0, 0, 1

    def set_epoch(self, epoch: int, start: int = 0, epochs: int = 1) -> None:
        """Epochs ``epoch`` ... ``epoch + epochs - 1``, the first from its sample ``start`` on (an epoch
        resumed in the middle)."""
        if not 0 <= start <= self.samples:
            raise ConfigError(f"start must be within [0, {self.samples}], got {start}")
        if epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {epochs}")
        self.epoch, self.start, self.epochs = epoch, start, epochs

    def __iter__(self):
        return iter(range(self.epoch * self.samples + self.start, (self.epoch + self.epochs) * self.samples))

    def __len__(self) -> int:
        return self.epochs * self.samples - self.start


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
        intensity: apply this :class:`IntensityAugment` too (after the geometric augmentation).
    """

    def __init__(self, cases: Sequence[CaseFiles], load: Callable[[CaseFiles], PreparedCase],
                 patch: Sequence[int], samples: int, seed: int = 0, rank: int = 0,
                 positive_ratio: float = 0.7, mode: str = "3d", augment: bool = True, cache_size: int = 8,
                 intensity: IntensityAugment | None = None):
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
        self.cache_size, self.intensity = cache_size, intensity
        self._cache: OrderedDict[str, PreparedCase] = OrderedDict()
        self._statistics: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return self.samples

    def case(self, case: CaseFiles) -> PreparedCase:
        if case.name in self._cache:
            self._cache.move_to_end(case.name)
            return self._cache[case.name]
        prepared = self.load(case)
        check_patch_fits(prepared.image.shape[1:], self.patch, case.name)
        self._cache[case.name] = prepared
        if self.intensity is not None:
            self._statistics[case.name] = foreground_statistics(prepared)
        while len(self._cache) > self.cache_size:
            self._statistics.pop(self._cache.popitem(last=False)[0], None)
        return prepared

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """The patch number ``index`` of this run (any non-negative integer, see EpochSampler)."""
        return self.sample(self._rng(index))

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.rank, index])

    def fixed_batches(self, batch_size: int) -> list[dict[str, torch.Tensor]]:
        """The dataset's ``len(self)`` patches (the same as indexing gives), drawn once in this process and
        stacked into batches: a fixed set, such as the validation patches or the batch-norm calibration
        patches, read beside the epochs' stream and never part of it."""
        items = [self.sample(self._rng(i)) for i in range(self.samples)]
        return [{k: torch.stack([it[k] for it in items[i:i + batch_size]]) for k in items[0]}
                for i in range(0, len(items), batch_size)]

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        positive = rng.random() < self.positive_ratio
        case = self.cases[int(rng.integers(len(self.cases)))]
        prepared = self.case(case)
        statistics = self._statistics.get(case.name)
        if positive and not prepared.foreground:
            positive = False  # a negative volume: nothing to centre on
        shape = prepared.image.shape[1:]
        if positive:
            k = int(rng.integers(len(prepared.foreground)))
            group = prepared.foreground[k]
            offsets = prepared.components[k] if prepared.components is not None else None
            if offsets is not None and len(offsets) > 2:  # a class of several lesions: each gets its share
                c = int(rng.integers(len(offsets) - 1))
                group = group[offsets[c]:offsets[c + 1]]
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
        if self.intensity is not None:
            image = self.intensity(image, statistics, rng)
        if self.mode == "2d":
            image = image.transpose(0, 3, 1, 2).reshape(-1, *self.patch[:2])  # (3C, X, Y)
            target = target[..., 1]
        target_t = torch.from_numpy(np.ascontiguousarray(target))
        if not label:
            target_t = target_t.float().unsqueeze(0)
        return {"image": torch.from_numpy(np.ascontiguousarray(image)).float(), "target": target_t,
                "spacing": torch.tensor(prepared.spacing, dtype=torch.float64)}
