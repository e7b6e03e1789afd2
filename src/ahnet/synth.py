"""Built-in synthetic anisotropic data: a CT-like liver/lesion task and a DBT-like mass detection task.

Both generators write the data set format of :mod:`ahnet.data.dataset` (nnU-Net v2 raw, plus
``boxesTr.json`` for detection), so everything that trains on real data trains on them unchanged.

They are built to make the paper's question real (§1, Fig. 13-17 of the supplement): a share of the
lesions is **indistinct in any single slice** — their contrast is set to the spread of equally
sized patches of the surrounding texture in that slice — and can only be told apart from texture
by their consistency across neighbouring slices, because the texture is independent from slice to
slice while a lesion persists. Thick slices are simulated by averaging sub-slices (partial volume);
DBT's limited-angle reconstruction by spreading every slice into its neighbours with a smear that
grows with the distance (out-of-plane blur).

Anatomy is drawn in coordinates relative to the field of view (a phantom fills its volume whatever
its shape) while lesions, vessels and noise are drawn in millimetres. Every case is generated from
``(seed, case index)`` alone: the same seed gives byte-identical volumes, whatever ``cases`` is.
The ground truth of every lesion and distractor is written to ``synth.json`` beside the data.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, DataError

#: sub-slices averaged into one thick slice (partial volume along z)
SUBSLICES = 3


@dataclass(frozen=True)
class SegSettings:
    """Difficulty and geometry of the CT-like phantom (pairs are ``(low, high)`` ranges drawn per case)."""

    inplane_mm: tuple[float, float] = (0.6, 0.9)
    slice_mm: tuple[float, float] = (2.5, 5.0)
    lesions: tuple[int, int] = (1, 5)
    lesion_mm: tuple[float, float] = (3.0, 30.0)
    #: share of cases with no lesion at all
    empty_fraction: float = 0.15
    #: share of faint lesions: their size and contrast match the single-slice look-alikes', so only
    #: their extent over >= 4 slices tells them apart
    faint_fraction: float = 0.3
    faint_hu: tuple[float, float] = (8.0, 16.0)
    #: lesion-like blobs (faint contrast, lesion sizes) in one slice only, per liver slice
    lookalikes_per_slice: float = 1.0
    liver_hu: tuple[float, float] = (55.0, 100.0)
    texture_hu: float = 10.0
    noise_hu: float = 12.0


@dataclass(frozen=True)
class DetSettings:
    """Difficulty and geometry of the DBT-like phantom. Real DBT is 0.085 mm in-plane; detection
    networks see it downsampled, and the default 0.3 mm keeps 128 voxels a useful field of view."""

    inplane_mm: float = 0.3
    slice_mm: float = 1.0
    masses: tuple[int, int] = (1, 2)
    mass_mm: tuple[float, float] = (3.0, 12.0)
    #: share of volumes without any mass (exactly ``round(cases * negative_fraction)`` of them)
    negative_fraction: float = 0.3
    spiculated_fraction: float = 0.4
    #: faint masses have the contrast of the single-slice tissue overlaps among the distractors
    faint_fraction: float = 0.3
    faint_contrast: tuple[float, float] = (0.05, 0.1)
    mass_contrast: tuple[float, float] = (0.12, 0.25)
    #: distractors per volume: lymph-node-like blobs, skin moles, single-slice tissue overlaps
    distractors: tuple[int, int] = (2, 5)
    #: out-of-plane blur: neighbouring slices leaking into each one (limited-angle tomography)
    blur_slices: int = 3
    noise: float = 0.03


# ---------------------------------------------------------------------------------------------
# Fields and shapes


def _coords(shape: tuple[int, int, int], sub: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre coordinates in [-1, 1] along X and Y, and along Z on a grid of ``sub``
    sub-slices per slice, broadcastable to (X, Y, Z * sub)."""
    x, y, z = shape
    u = ((np.arange(x) + 0.5) / x * 2 - 1).astype(np.float32)[:, None, None]
    v = ((np.arange(y) + 0.5) / y * 2 - 1).astype(np.float32)[None, :, None]
    w = ((np.arange(z * sub) + 0.5) / (z * sub) * 2 - 1).astype(np.float32)[None, None, :]
    return u, v, w


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], coarse: tuple[int, int, int]) -> np.ndarray:
    """A smooth random field of unit spread: white noise on a coarse grid, trilinearly upsampled."""
    noise = torch.from_numpy(rng.standard_normal(coarse).astype(np.float32))[None, None]
    field = F.interpolate(noise, size=shape, mode="trilinear", align_corners=False)[0, 0].numpy()
    return field / max(float(field.std()), 1e-6)


def _filtered_noise(rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...],
                    gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """White noise shaped in the Fourier domain by ``gain(|f|)`` (``f`` in cycles/mm) over the axes
    that have a spacing; an axis with spacing 0 stays white (its slices are independent).
    Normalised to unit spread."""
    noise = rng.standard_normal(shape).astype(np.float32)
    axes = tuple(i for i, s in enumerate(spacing) if s > 0)
    grids = np.meshgrid(*[np.fft.fftfreq(shape[i], d=spacing[i]) for i in axes], indexing="ij", sparse=True)
    f = np.sqrt(sum(g ** 2 for g in grids)).reshape([shape[i] if i in axes else 1 for i in range(len(shape))])
    out = np.fft.ifftn(np.fft.fftn(noise, axes=axes) * gain(f), axes=axes).real.astype(np.float32)
    return out / max(float(out.std()), 1e-6)


def _texture(rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, float],
             largest_mm: float = 30.0, finest_mm: float = 1.0) -> np.ndarray:
    """In-plane texture with a 1/f amplitude spectrum between ``finest_mm`` and ``largest_mm``, so
    it holds lesion-like blobs of every size, independent from slice to slice: exactly what a
    lesion that persists across slices stands out from."""
    return _filtered_noise(rng, shape, (*spacing, 0.0),
                           lambda f: (f ** 2 + largest_mm ** -2) ** -0.5 * np.exp(-2 * (np.pi * f * finest_mm) ** 2))


def _ellipsoid(u, v, w, centre, radii, wobble: np.ndarray | None = None, amount: float = 0.0) -> np.ndarray:
    """Boolean ellipsoid in the coordinates' units; ``wobble`` (a smooth field) bends its surface."""
    d = ((u - centre[0]) / radii[0]) ** 2 + ((v - centre[1]) / radii[1]) ** 2 + ((w - centre[2]) / radii[2]) ** 2
    limit = 1.0 if wobble is None else 1.0 + amount * wobble
    return d < limit


def _segment_distance(points: tuple[np.ndarray, np.ndarray, np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from every grid point to the segment ``a``-``b`` (same units as the points)."""
    ab = b - a
    t = sum((p - a[i]) * ab[i] for i, p in enumerate(points)) / max(float(ab @ ab), 1e-9)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt(sum((p - (a[i] + t * ab[i])) ** 2 for i, p in enumerate(points)))


def _average_subslices(array: np.ndarray, sub: int) -> np.ndarray:
    x, y, zs = array.shape
    return array.reshape(x, y, zs // sub, sub).mean(axis=3, dtype=np.float32)


def _blur_inplane(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian in-plane blur (the scanner's point spread), slice by slice."""
    x, y, _ = image.shape
    fx = np.fft.fftfreq(x)[:, None]
    fy = np.fft.rfftfreq(y)[None, :]
    gain = np.exp(-2 * (np.pi * sigma_px) ** 2 * (fx ** 2 + fy ** 2))[..., None]
    return np.fft.irfft2(np.fft.rfft2(image, axes=(0, 1)) * gain, s=(x, y), axes=(0, 1)).astype(np.float32)


def _mm_coords(shape: tuple[int, int, int], spacing: tuple[float, float, float], sub: int):
    """Millimetre coordinates of voxel centres (origin at the volume centre), Z on the sub-slice grid."""
    x, y, z = shape
    px = ((np.arange(x) + 0.5 - x / 2) * spacing[0]).astype(np.float32)[:, None, None]
    py = ((np.arange(y) + 0.5 - y / 2) * spacing[1]).astype(np.float32)[None, :, None]
    pz = ((np.arange(z * sub) + 0.5) / sub - z / 2).astype(np.float32)[None, None, :] * spacing[2]
    return px, py, pz


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


# ---------------------------------------------------------------------------------------------
# CT-like phantom


def seg_case(seed: int, index: int, shape: tuple[int, int, int] = (128, 128, 32),
             settings: SegSettings = SegSettings()) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], dict]:
    """One CT-like abdomen: ``(image HU int16, label uint8 0/1 liver/2 lesion, spacing mm, truth)``.

    Body with fat and muscle, spine, aorta and vena cava, kidneys, stomach with gas, gallbladder
    and a spleen of liver-like density as distractors; a liver with enhancing vessels and low-
    frequency inhomogeneity; hypo-, hyper- and rim-enhancing lesions and faint ones (see module).
    """
    rng = np.random.default_rng([seed, index, 1])
    s = settings
    spacing = (round(float(rng.uniform(*s.inplane_mm)), 4),) * 2 + (round(float(rng.uniform(*s.slice_mm)), 4),)
    sub = SUBSLICES
    fine = (shape[0], shape[1], shape[2] * sub)
    u, v, w = _coords(shape, sub)
    coarse = (6, 6, max(3, shape[2] // 4))
    wob = [_smooth_field(rng, fine, coarse) for _ in range(3)]
    jitter = lambda scale: float(rng.uniform(-scale, scale))  # noqa: E731

    hu = np.full(fine, -1000.0, dtype=np.float32)
    body = _ellipsoid(u, v, w * 0, (jitter(0.02), 0.03, 0), (0.93, 0.78, 1), wob[0], 0.03)
    hu[body] = -100.0
    inner = _ellipsoid(u, v, w * 0, (0, 0.03, 0), (0.86, 0.70, 1), wob[0], 0.03)
    hu[body & ~inner] = 45.0  # abdominal wall muscle under the fat
    core = _ellipsoid(u, v, w * 0, (0, 0.03, 0), (0.82, 0.66, 1), wob[0], 0.03)
    hu[core] = -70.0 + 80.0 / (1.0 + np.exp(-2.0 * wob[1][core]))  # fat and bowel mixture
    spine = _ellipsoid(u, v, w * 0, (0, 0.52, 0), (0.12, 0.11, 1))
    hu[spine] = 700.0
    hu[_ellipsoid(u, v, w * 0, (0, 0.52, 0), (0.09, 0.08, 1))] = 250.0
    hu[_ellipsoid(u, v, w * 0, (0.07, 0.33, 0), (0.05, 0.05, 1))] = 180.0  # aorta
    for side in (-1, 1):
        kidney = _ellipsoid(u, v, w, (0.34 * side, 0.42, -0.35 + jitter(0.1)), (0.13, 0.16, 0.45), wob[2], 0.08)
        hu[kidney] = 170.0 + jitter(20)
        hu[kidney & _ellipsoid(u, v, w, (0.36 * side, 0.42, -0.35), (0.06, 0.08, 0.4))] = 40.0
    stomach = _ellipsoid(u, v, w, (0.33, -0.18, 0.45), (0.24, 0.2, 0.5), wob[1], 0.1)
    hu[stomach] = 20.0 + jitter(10)
    hu[stomach & (v < -0.26)] = -900.0  # gas cap rising anteriorly
    liver_hu = float(rng.uniform(*s.liver_hu))
    spleen = _ellipsoid(u, v, w, (0.55, 0.25, 0.35), (0.16, 0.26, 0.5), wob[2], 0.1)
    hu[spleen] = liver_hu + jitter(12)

    liver = _ellipsoid(u, v, w, (-0.36 + jitter(0.04), -0.02, 0.1 + jitter(0.1)), (0.42, 0.5, 0.95), wob[0], 0.12)
    liver |= _ellipsoid(u, v, w, (0.02, -0.25, 0.45), (0.3, 0.17, 0.45), wob[1], 0.12)  # left lobe
    liver &= inner
    gallbladder = _ellipsoid(u, v, w, (-0.12, -0.36, -0.35), (0.07, 0.1, 0.22), wob[2], 0.05)
    hu[liver] = liver_hu + 3.0 * wob[2][liver]  # slow inhomogeneity
    hu[gallbladder & inner] = 8.0  # fluid, hypodense like a lesion but outside the liver
    liver &= ~gallbladder
    hu[_ellipsoid(u, v, w * 0, (-0.14, 0.35, 0), (0.05, 0.05, 1)) & inner] = 140.0  # vena cava by the liver

    px, py, pz = _mm_coords(shape, spacing, sub)
    vessel = np.zeros(fine, dtype=bool)
    idx = np.argwhere(liver)
    for _ in range(int(rng.integers(3, 7))):
        a, b = (idx[rng.integers(len(idx))] for _ in range(2))
        to_mm = lambda i: np.array([px[i[0], 0, 0], py[0, i[1], 0], pz[0, 0, i[2]]])  # noqa: E731
        radius = float(rng.uniform(1.0, 2.5))
        vessel |= _segment_distance((px, py, pz), to_mm(a), to_mm(b)) < radius
    vessel &= liver
    hu[vessel] = liver_hu + float(rng.uniform(30, 60))

    # lesions: geometry on the sub-slice grid, contrast added after averaging (it is linear)
    lesions = []
    n_lesions = 0 if rng.random() < s.empty_fraction else int(rng.integers(s.lesions[0], s.lesions[1] + 1))
    liver_radius_mm = 0.4 * min(shape[0] * spacing[0], shape[1] * spacing[1])
    taken = np.zeros(fine, dtype=bool)
    for _ in range(n_lesions):
        faint = rng.random() < s.faint_fraction
        low = max(s.lesion_mm[0], 4.2 * spacing[2]) if faint else s.lesion_mm[0]  # >= 4 slices
        high = min(s.lesion_mm[1], liver_radius_mm)
        if low > high:
            continue
        diameter = _log_uniform(rng, low, high)
        for _try in range(25):
            c = idx[rng.integers(len(idx))]
            centre = np.array([px[c[0], 0, 0], py[0, c[1], 0], pz[0, 0, c[2]]])
            radii = diameter / 2 * np.array([1.0, rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.25)])
            mask = _ellipsoid(px, py, pz, centre, radii, wob[int(rng.integers(3))], 0.15)
            if mask.sum() and (mask & liver).sum() >= 0.8 * mask.sum() and not (mask & taken).any():
                break
        else:
            continue
        mask &= liver
        taken |= mask
        kind = "faint" if faint else str(rng.choice(["hypo", "hypo", "hyper", "rim"]))
        lesions.append({"kind": kind, "diameter_mm": round(diameter, 2), "mask": mask,
                        "centre_voxel": [round(float(c[0]), 1), round(float(c[1]), 1), round(float(c[2]) / sub, 1)],
                        "contrast": {"hypo": -float(rng.uniform(20, 60)), "hyper": float(rng.uniform(15, 40)),
                                     "rim": -float(rng.uniform(20, 45)),
                                     "faint": float(rng.choice([-1.0, 1.0]) * rng.uniform(*s.faint_hu))}[kind]})

    base = _blur_inplane(_average_subslices(hu, sub), 0.6)
    liver_frac = _average_subslices(liver.astype(np.float32), sub)
    lesion_frac = np.zeros(shape, dtype=np.float32)
    tissue = base > -300
    texture = _texture(rng, shape, spacing[:2]) * s.texture_hu * (0.4 + 0.6 * liver_frac) * tissue
    noise = _blur_inplane(rng.standard_normal(shape).astype(np.float32), 0.5)
    noise *= s.noise_hu / max(float(noise.std()), 1e-6)
    truth = []
    for les in lesions:
        frac = _average_subslices(les.pop("mask").astype(np.float32), sub)
        lesion_frac = np.maximum(lesion_frac, frac)
        contrast = les.pop("contrast")
        profile = frac
        if les["kind"] == "rim":  # dark necrotic core (the contrast) inside an enhancing rim
            core = np.clip(2 * _blur_inplane(frac, max(1.0, les["diameter_mm"] / 8 / spacing[0])) - 1, 0, 1)
            profile = core - 0.6 * (frac - core)
        base += _blur_inplane(contrast * profile, 0.6)
        les["contrast_hu"] = round(float(contrast), 2)
        les["slices"] = int((frac.max(axis=(0, 1)) > 0.5).sum())
        truth.append(les)
    lookalikes = _lookalikes(rng, liver_frac > 0.99, lesion_frac > 0, spacing, s)
    image = np.clip(np.rint(base + lookalikes + texture + noise), -1024, 3071).astype(np.int16)
    label = np.zeros(shape, dtype=np.uint8)
    label[liver_frac >= 0.5] = 1
    label[(lesion_frac >= 0.5) & (liver_frac >= 0.5)] = 2
    return image, label, spacing, {"spacing": list(spacing), "liver_hu": round(liver_hu, 1), "lesions": truth,
                                   "lookalikes": int(lookalikes.any(axis=(0, 1)).sum())}


def _lookalikes(rng: np.random.Generator, liver: np.ndarray, lesions: np.ndarray, spacing, s: SegSettings) -> np.ndarray:
    """Blobs with the size and contrast of faint lesions, each in a single slice, away from real
    lesions: in one slice a faint lesion cannot be told from them (what 2D context lacks)."""
    out = np.zeros(liver.shape, dtype=np.float32)
    x, y = np.meshgrid(np.arange(liver.shape[0]), np.arange(liver.shape[1]), indexing="ij")
    for z in range(liver.shape[2]):
        where = np.argwhere(liver[..., z] & ~lesions[..., z])
        if len(where) < 50:
            continue
        for _ in range(int(rng.poisson(s.lookalikes_per_slice))):
            cx, cy = where[rng.integers(len(where))]
            r = _log_uniform(rng, max(s.lesion_mm[0], 4.2 * spacing[2]), max(s.lesion_mm[0], s.lesion_mm[1])) / 2
            r_px = r / spacing[0] * np.sqrt(rng.uniform(0.5, 1.0))  # a slice cuts a sphere below its equator
            blob = ((x - cx) ** 2 + (y - cy) ** 2 <= r_px ** 2) & liver[..., z] & ~lesions[..., z]
            out[..., z] += float(rng.choice([-1.0, 1.0]) * rng.uniform(*s.faint_hu)) * blob
    return _blur_inplane(out, 0.6)


# ---------------------------------------------------------------------------------------------
# DBT-like phantom


def _out_of_plane_blur(volume: np.ndarray, reach: int, smear_px_per_slice: float) -> np.ndarray:
    """Limited-angle tomography: every slice receives its neighbours, weaker and smeared along Y
    (the tube's sweep) the further away they are. ``reach`` slices on each side."""
    volume = volume.astype(np.float32)
    out = volume.copy()
    total = 1.0
    for k in range(1, reach + 1):
        weight = 0.5 ** k
        width = max(1, int(round(1 + 2 * smear_px_per_slice * k)))
        for shift in (k, -k):
            moved = np.roll(volume, shift, axis=2)
            if shift > 0:
                moved[..., :shift] = volume[..., :1]
            else:
                moved[..., shift:] = volume[..., -1:]
            kernel = torch.ones(1, 1, 1, width) / width
            t = torch.from_numpy(np.ascontiguousarray(moved.transpose(2, 0, 1)))[:, None]
            smeared = F.conv2d(F.pad(t, (width // 2, width - 1 - width // 2, 0, 0), mode="replicate"), kernel)
            out += weight * smeared[:, 0].numpy().transpose(1, 2, 0)
            total += weight
    return out / total


def det_case(seed: int, index: int, shape: tuple[int, int, int] = (128, 128, 40), negative: bool = False,
             settings: DetSettings = DetSettings()) -> tuple[np.ndarray, list[list[int]], tuple[float, float, float], dict]:
    """One DBT-like volume: ``(image uint16, boxes [[x0, y0, z0, x1, y1, z1]] inclusive, spacing, truth)``.

    Compressed breast against the chest wall (X = 0 side) with skin, fat, power-law
    fibroglandular tissue; round and spiculated masses (faint ones among them); lymph-node-like
    blobs with a fatty hilum, skin moles on the compression surfaces and single-slice tissue
    overlaps as distractors; out-of-plane blur and quantum noise.
    """
    rng = np.random.default_rng([seed, index, 2])
    s = settings
    spacing = (float(s.inplane_mm), float(s.inplane_mm), float(s.slice_mm))
    u, v, w = _coords(shape, 1)
    px, py, pz = _mm_coords(shape, spacing, 1)
    wob = _smooth_field(rng, shape, (5, 5, 3))

    offset = float(rng.uniform(-0.05, 0.05))
    breast = _ellipsoid(u, v, w * 0, (-1.0, offset, 0), (1.85, 0.95, 1), wob, 0.04) & (np.abs(w) < 0.92)
    skin = breast & ~_ellipsoid(u, v, w * 0, (-1.0, offset, 0), (1.8, 0.91, 1), wob, 0.04)
    # compression flattens fibroglandular tissue into sheets: structures decorrelate 3x faster in z
    gland_field = _filtered_noise(rng, shape, (spacing[0], spacing[1], 3 * spacing[2]),
                                  lambda f: np.where(f > 0, (f + 0.02) ** -1.5, 0.0))
    density = float(rng.uniform(0.3, 0.6))  # breast density: share of fibroglandular tissue
    gland = 1.0 / (1.0 + np.exp(-4.0 * (gland_field - np.quantile(gland_field[breast], 1 - density))))
    gland *= np.clip(1.2 - np.abs(u + 0.1), 0.3, 1.0)  # denser behind the nipple
    image = np.where(breast, 0.25 + 0.3 * gland, 0.0).astype(np.float32)
    image[skin] = 0.5

    masses = []
    n_masses = 0 if negative else int(rng.integers(s.masses[0], s.masses[1] + 1))
    inside = np.argwhere(breast & ~skin & (np.abs(w) < 0.7) & (u < 0.55) & (np.abs(v) < 0.7))
    field_mm = min(shape[0] * spacing[0], shape[1] * spacing[1])
    taken = np.zeros(shape, dtype=bool)
    for _ in range(n_masses):
        faint = rng.random() < s.faint_fraction
        spiculated = rng.random() < s.spiculated_fraction
        low = max(s.mass_mm[0], 4.2 * spacing[2]) if faint else s.mass_mm[0]  # >= 4 slices
        diameter = _log_uniform(rng, low, max(low, min(s.mass_mm[1], 0.35 * field_mm)))
        for _try in range(25):
            c = inside[rng.integers(len(inside))]
            centre = np.array([px[c[0], 0, 0], py[0, c[1], 0], pz[0, 0, c[2]]])
            radii = diameter / 2 * np.array([1.0, rng.uniform(0.75, 1.25), rng.uniform(0.7, 1.0)])
            mask = _ellipsoid(px, py, pz, centre, radii, wob, 0.2)
            if mask.any() and not (mask & taken).any() and (mask & breast).sum() == mask.sum():
                break
        else:
            continue
        taken |= _ellipsoid(px, py, pz, centre, radii * 1.6)
        profile = mask.astype(np.float32)
        if spiculated:  # thin in-plane spicules radiating from the core, over its central slices
            near = np.abs(pz - centre[2]) < radii[2] * 0.6
            for angle in rng.uniform(0, 2 * np.pi, int(rng.integers(6, 12))):
                tip = centre + np.array([np.cos(angle), np.sin(angle), 0.0]) * diameter * rng.uniform(0.9, 1.6)
                line = _segment_distance((px, py, pz), centre, tip) < max(0.25, 0.8 * spacing[0])
                profile = np.maximum(profile, 0.7 * (line & near & breast))
        masses.append({"mask": mask, "profile": profile, "faint": faint, "spiculated": spiculated,
                       "diameter_mm": round(diameter, 2)})

    distractors = []
    for _ in range(int(rng.integers(s.distractors[0], s.distractors[1] + 1))):
        kind = str(rng.choice(["lymph_node", "mole", "overlap"]))
        c = inside[rng.integers(len(inside))]
        centre = np.array([px[c[0], 0, 0], py[0, c[1], 0], pz[0, 0, c[2]]])
        size = float(rng.uniform(*s.mass_mm)) / 2
        if kind == "lymph_node":  # oval with a dark fatty hilum, close to the chest wall
            centre[0] = px[0, 0, 0] + rng.uniform(0.1, 0.3) * shape[0] * spacing[0]
            node = _ellipsoid(px, py, pz, centre, np.array([size, size * 0.6, size * 0.6]))
            hilum = _ellipsoid(px, py, pz, centre + np.array([size * 0.4, 0, 0]), np.array([size * 0.5, size * 0.25, size * 0.4]))
            image[node & breast] = 0.68
            image[hilum & node & breast] = 0.3
        elif kind == "mole":  # on the skin of a compression surface: one or two slices
            zs = np.nonzero(np.any(breast, axis=(0, 1)))[0]
            centre[2] = pz[0, 0, zs[0] if rng.random() < 0.5 else zs[-1]]
            blob = _ellipsoid(px, py, pz, centre, np.array([size * 0.5, size * 0.5, spacing[2] * 0.9]))
            image[blob & breast] = 0.75
        else:  # overlapping tissue that looks like a faint mass, in a single slice only
            blob = _ellipsoid(px, py, pz, centre, np.array([size, size * rng.uniform(0.8, 1.2), spacing[2] * 0.5]))
            image[blob & breast] += float(rng.uniform(*s.faint_contrast))
        distractors.append({"kind": kind, "centre_voxel": [int(c[0]), int(c[1]), int(c[2])]})

    image = _out_of_plane_blur(image, s.blur_slices, smear_px_per_slice=0.6 / spacing[1] * spacing[2] / 1.0)
    noise = rng.standard_normal(shape).astype(np.float32) * s.noise
    boxes, truth = [], []
    for m in masses:
        contrast = float(rng.uniform(*(s.faint_contrast if m["faint"] else s.mass_contrast)))
        blurred = _out_of_plane_blur(m["profile"], s.blur_slices, 0.6 / spacing[1] * spacing[2])
        image += contrast * blurred
        where = np.argwhere(m["mask"])
        box = [*(int(i) for i in where.min(axis=0)), *(int(i) for i in where.max(axis=0))]
        boxes.append(box)
        truth.append({"box": box, "diameter_mm": m["diameter_mm"], "spiculated": m["spiculated"],
                      "faint": m["faint"], "contrast": round(contrast, 4)})
    image = np.clip(image + noise, 0.0, 1.0)
    counts = np.rint(image * 4000).astype(np.uint16)
    return counts, boxes, spacing, {"spacing": list(spacing), "masses": truth, "distractors": distractors}


# ---------------------------------------------------------------------------------------------
# Data sets


def _settings(cls, overrides: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown phantom setting(s) {unknown}; known: {sorted(names)}")
    try:
        fixed = {}
        for k, value in overrides.items():
            default = getattr(cls, k)
            if isinstance(default, tuple):
                value = tuple(type(default[0])(x) for x in (value if isinstance(value, (list, tuple)) else (value, value)))
                if len(value) != 2 or value[0] > value[1]:
                    raise ValueError(f"{k} must be a (low, high) pair with low <= high")
            else:
                value = type(default)(value)
            fixed[k] = value
        return cls(**fixed)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"phantom setting: {e}") from None


def _check_request(cases: int, shape, minimum: tuple[int, int, int]) -> tuple[int, int, int]:
    if not isinstance(cases, int) or cases < 1:
        raise ConfigError(f"cases must be a positive integer, got {cases!r}")
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ConfigError(f"shape must be three integers (X, Y, Z), got {shape!r}") from None
    if len(shape) != 3 or any(s < m for s, m in zip(shape, minimum)):
        raise ConfigError(f"shape must be three integers of at least {minimum} (X, Y, Z = slices), got {shape}")
    return shape


class _Writer:
    """Writes a data set into a hidden sibling folder and moves it into place when the ``with``
    block ends without an error, so an interrupted run never leaves a half-written data set behind."""

    def __init__(self, out: str | Path, overwrite: bool):
        self.out = Path(out)
        if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            if not overwrite:
                raise DataError(f"{self.out}: exists and is not empty; choose a new folder or pass overwrite")
            if not (self.out / "synth.json").is_file():
                raise DataError(f"{self.out}: not removed, it is not a synthetic data set (no synth.json)")
        self.tmp = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        try:
            shutil.rmtree(self.tmp, ignore_errors=True)
            (self.tmp / "imagesTr").mkdir(parents=True)
        except OSError as e:
            raise DataError(f"{self.out.parent}: cannot write the data set there ({e})") from e

    def nifti(self, rel: str, array: np.ndarray, spacing) -> None:
        affine = np.diag([*spacing, 1.0])
        img = nib.Nifti1Image(array, affine)
        img.header.set_zooms(spacing)
        img.header.set_xyzt_units("mm")
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        path = self.tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, str(path))

    def json(self, rel: str, data) -> None:
        (self.tmp / rel).write_text(json.dumps(data, indent=2) + "\n")

    def __enter__(self) -> "_Writer":
        return self

    def __exit__(self, error_type, error, tb) -> None:
        if error_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self.tmp, self.out)


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="case", disable=None)  # None: bars on terminals only


def make_seg_dataset(out: str | Path, cases: int = 8, seed: int = 0, shape=(128, 128, 32), progress: bool = False,
                     overwrite: bool = False, **settings) -> Path:
    """Write a CT-like liver/lesion data set (``case_000`` ...; labels 0 background, 1 liver, 2
    lesion; channel ``CT`` in HU). ``settings`` override :class:`SegSettings` fields."""
    config = _settings(SegSettings, settings)
    shape = _check_request(cases, shape, (32, 32, 6))
    truth = {}
    with _Writer(out, overwrite) as writer:
        for k in _progress(range(cases), cases, "synth seg", progress):
            name = f"case_{k:03d}"
            image, label, spacing, meta = seg_case(seed, k, shape, config)
            writer.nifti(f"imagesTr/{name}_0000.nii.gz", image, spacing)
            writer.nifti(f"labelsTr/{name}.nii.gz", label, spacing)
            truth[name] = meta
        writer.json("dataset.json", {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "lesion": 2},
                                     "numTraining": cases, "file_ending": ".nii.gz",
                                     "description": "ahnet synthetic CT-like liver/lesion phantoms"})
        writer.json("synth.json", {"generator": "ahnet.synth.make_seg_dataset", "seed": seed, "shape": list(shape),
                                   "settings": dataclasses.asdict(config), "cases": truth})
    return writer.out


def make_det_dataset(out: str | Path, cases: int = 8, seed: int = 0, shape=(128, 128, 40), progress: bool = False,
                     overwrite: bool = False, **settings) -> Path:
    """Write a DBT-like detection data set: ``imagesTr`` (channel ``DBT``) and ``boxesTr.json``
    (inclusive voxel boxes; ``[]`` for negative volumes). ``settings`` override :class:`DetSettings`."""
    config = _settings(DetSettings, settings)
    shape = _check_request(cases, shape, (32, 32, 8))
    negatives = set(np.random.default_rng([seed, 3]).permutation(cases)[: int(round(cases * config.negative_fraction))].tolist())
    boxes, truth = {}, {}
    with _Writer(out, overwrite) as writer:
        for k in _progress(range(cases), cases, "synth det", progress):
            name = f"case_{k:03d}"
            image, case_boxes, spacing, meta = det_case(seed, k, shape, k in negatives, config)
            writer.nifti(f"imagesTr/{name}_0000.nii.gz", image, spacing)
            boxes[name] = case_boxes
            truth[name] = meta
        writer.json("boxesTr.json", boxes)
        writer.json("dataset.json", {"channel_names": {"0": "DBT"}, "labels": {"background": 0, "lesion": 1},
                                     "numTraining": cases, "file_ending": ".nii.gz",
                                     "description": "ahnet synthetic DBT-like mass phantoms"})
        writer.json("synth.json", {"generator": "ahnet.synth.make_det_dataset", "seed": seed, "shape": list(shape),
                                   "settings": dataclasses.asdict(config), "cases": truth})
    return writer.out
