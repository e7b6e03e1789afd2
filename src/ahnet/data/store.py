"""``ahnet preprocess``: every case prepared once, stored uncompressed and memory-mapped, as nnU-Net does.

Training then crops patches from memory-mapped arrays instead of decompressing and renormalising a whole
volume for (almost) every patch. Layout of a store folder::

    preprocessing.json          the settings every case was prepared with (Preprocessing.to_dict)
    fingerprint.json            what the raw data look like (see :func:`fingerprint_dataset`)
    cases/{case}_image.npy      (C, X, Y, Z) float32, network orientation, normalised and resampled
    cases/{case}_target.npy     (X, Y, Z) uint8 labels, or the Eq. 5 heatmap (float32) for detection
    cases/{case}_locations.npz  foreground voxels per class, grouped by connected component (per lesion)
    cases/{case}.json           the case's record, written last: a case without it was never finished

Crash-safe: every file is written through a temporary file and renamed, a case's record is removed
before its arrays are rewritten and written after them, so a kill at any moment leaves complete cases
and cases without a record, which the next run prepares again. A record names its source files (size
and modification time) and the settings: a changed file or setting makes the case stale, and training
refuses a stale store rather than train on old data.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError
from ..fileio import atomic_write, atomic_write_text, ensure_output_dir
from ..tasks import task_for
from .dataset import CaseFiles, DatasetInfo, load_dataset
from .preprocessing import PreparedCase, Preprocessing, load_case
from .volume import load_volume

STORE_VERSION = 1
#: Foreground intensities sampled per case and channel for the fingerprint (nnU-Net samples 10,000).
FINGERPRINT_SAMPLES = 10_000


def settings_key(prep: Preprocessing) -> str:
    """A short hash of the settings, stored with each case: another setting makes the case stale."""
    text = json.dumps({"version": STORE_VERSION, **prep.to_dict()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def source_stamp(case: CaseFiles) -> list[list]:
    """Each source file with its size and modification time: enough to notice a replaced file cheaply."""
    files = list(case.images) + ([case.label] if case.label is not None else [])
    out = []
    for path in files:
        st = os.stat(path)
        out.append([str(Path(path).resolve()), st.st_size, st.st_mtime_ns])
    if case.boxes is not None:
        out.append(["boxes", hashlib.sha256(json.dumps(case.boxes).encode()).hexdigest()[:16]])
    return out


@dataclass
class StoreReport:
    root: Path
    prepared: list[str]
    kept: list[str]

    def text(self) -> str:
        return (f"preprocessed {len(self.prepared)} case(s), {len(self.kept)} already up to date, "
                f"in {self.root}")


class PreprocessedStore:
    """A store folder (see the module docstring): which cases are current, and their arrays."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.cases_dir = self.root / "cases"

    def record_path(self, name: str) -> Path:
        return self.cases_dir / f"{name}.json"

    def record(self, name: str) -> dict | None:
        try:
            return json.loads(self.record_path(name).read_text())
        except (OSError, ValueError):
            return None

    def is_current(self, case: CaseFiles, key: str) -> bool:
        record = self.record(case.name)
        return (record is not None and record.get("settings") == key and record.get("sources") == source_stamp(case)
                and all((self.cases_dir / f"{case.name}_{part}").is_file()
                        for part in ("image.npy", "target.npy", "locations.npz")))

    def preprocessing(self) -> Preprocessing:
        path = self.root / "preprocessing.json"
        try:
            return Preprocessing.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path}: not a preprocessed store ({type(err).__name__}: {err}); "
                            "run `ahnet preprocess DATASET` first") from None

    def check(self, cases: Sequence[CaseFiles], prep: Preprocessing) -> None:
        """Raise :class:`DataError` unless every case is current for ``prep``."""
        key = settings_key(prep)
        stale = [c.name for c in cases if not self.is_current(c, key)]
        if stale:
            raise DataError(f"{self.root}: {len(stale)} case(s) not preprocessed with the current files and settings "
                            f"({', '.join(stale[:5])}{' ...' if len(stale) > 5 else ''}); run `ahnet preprocess` again")

    def write_case(self, case: CaseFiles, info: DatasetInfo, prep: Preprocessing, seed: int = 0) -> str:
        """Prepare one case and store it (see the module docstring for the order of writes)."""
        self.record_path(case.name).unlink(missing_ok=True)
        image, label, boxes, spacing = load_case(case, info, prep)
        rng = np.random.default_rng([seed, 7919])
        task = task_for(prep.task)
        target, arrays, class_voxels = task.store(task.target(image.shape[1:], label, boxes, prep), boxes, rng)
        base = self.cases_dir / case.name
        atomic_write(Path(f"{base}_image.npy"), lambda tmp: _save_npy(tmp, image.astype(np.float32)), suffix=".npy")
        atomic_write(Path(f"{base}_target.npy"), lambda tmp: _save_npy(tmp, target), suffix=".npy")
        atomic_write(Path(f"{base}_locations.npz"), lambda tmp: _save_npz(tmp, arrays), suffix=".npz")
        record = {"version": STORE_VERSION, "settings": settings_key(prep), "sources": source_stamp(case),
                  "shape": list(image.shape[1:]), "spacing": list(spacing), "boxes": [list(b) for b in boxes],
                  "classes": class_voxels}
        atomic_write_text(self.record_path(case.name), json.dumps(record))
        return case.name

    def load(self, case: CaseFiles) -> PreparedCase:
        """A stored case, memory-mapped (read-only): patches read only the pages they cover."""
        record = self.record(case.name)
        if record is None:
            raise DataError(f"{self.record_path(case.name)}: case {case.name!r} is not preprocessed; "
                            "run `ahnet preprocess` again")
        base = self.cases_dir / case.name
        try:
            image = np.load(f"{base}_image.npy", mmap_mode="r")
            target = np.load(f"{base}_target.npy", mmap_mode="r")
            with np.load(f"{base}_locations.npz") as loc:
                n = len(loc["classes"])
                foreground = [loc[f"voxels_{k}"] for k in range(n)]
                components = [loc[f"offsets_{k}"] for k in range(n)] if f"offsets_0" in loc.files else None
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"{base}_*: stored case {case.name!r} cannot be read ({err}); "
                            "run `ahnet preprocess` again") from None
        return PreparedCase(case.name, image, target, foreground, [tuple(b) for b in record["boxes"]],
                            tuple(record["spacing"]), components)


class StoredCaseLoader:
    """Picklable loader of stored cases for DataLoader workers (the counterpart of ``CaseLoader``)."""

    def __init__(self, root: str | Path):
        self.root = str(root)

    def __call__(self, case: CaseFiles) -> PreparedCase:
        return PreprocessedStore(self.root).load(case)


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array))


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _one_thread() -> None:
    """A forked child works with one thread: OpenMP's pool does not survive a fork (a child that used
    the parent's could hang), and the cases already run in parallel across processes."""
    import torch

    torch.set_num_threads(1)


def _pool(workers: int):
    # fork, as DataLoader workers do: no re-import of the caller's script, which spawn would need guarded
    method = "fork" if "fork" in get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(workers, mp_context=get_context(method), initializer=_one_thread)


def _run_all(function, jobs: list, workers: int, desc: str, progress: bool) -> list:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc=desc, unit="case", disable=None if progress else True)
    results = []
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                results.append(function(*job))
                bar.update()
        else:
            with _pool(min(workers, len(jobs))) as pool:
                for result in pool.map(_call, [(function, job) for job in jobs]):
                    results.append(result)
                    bar.update()
    finally:
        bar.close()
    return results


def _call(item):
    function, job = item
    return function(*job)


def _write_one(root: str, case: CaseFiles, info: DatasetInfo, prep: Preprocessing) -> str:
    return PreprocessedStore(root).write_case(case, info, prep)


def preprocess_dataset(dataset: str | Path, prep: Preprocessing, out: str | Path, *, workers: int = 2,
                       progress: bool = True) -> StoreReport:
    """Prepare every case of ``dataset`` that is not current in the store ``out`` (parallel over cases)."""
    info = dataset if isinstance(dataset, DatasetInfo) else load_dataset(dataset)
    if prep.task != info.task:
        raise DataError(f"{info.root}: a {info.task} data set, but the preprocessing is for {prep.task}")
    store = PreprocessedStore(ensure_output_dir(out, "preprocessed folder"))
    store.cases_dir.mkdir(exist_ok=True)
    atomic_write_text(store.root / "preprocessing.json", json.dumps(prep.to_dict(), indent=2))
    key = settings_key(prep)
    todo = [c for c in info.cases if not store.is_current(c, key)]
    kept = sorted({c.name for c in info.cases} - {c.name for c in todo})
    done = _run_all(_write_one, [(str(store.root), c, info, prep) for c in todo], workers, "preprocess", progress)
    return StoreReport(store.root, done, kept)


# ------------------------------------------------------------------------------------------ fingerprint

def case_fingerprint(case: CaseFiles, info: DatasetInfo, seed: int = 0) -> dict:
    """Spacing and shape (network orientation), foreground intensity samples per channel, class voxels and
    connected components of one case, and the share of its foreground (every class together) in the largest
    connected component, read from its raw files."""
    from scipy import ndimage

    volumes = [load_volume(p) for p in case.images]
    ref = volumes[0]
    rng = np.random.default_rng([seed, 104729])
    if case.label is not None:
        label = load_volume(case.label, is_label=True).array
        mask = label > 0
    else:
        label, mask = None, np.ones(ref.array.shape, dtype=bool)
    if not mask.any():
        mask = np.ones(ref.array.shape, dtype=bool)
    where = np.flatnonzero(mask)
    pick = where if len(where) <= FINGERPRINT_SAMPLES else rng.choice(where, FINGERPRINT_SAMPLES, replace=False)
    channels = []
    for v in volumes:
        flat = v.array.reshape(-1)
        channels.append({"samples": flat[pick].astype(np.float64).round(3).tolist(),
                         "min": float(flat.min()), "max": float(flat.max()),
                         "mean": float(flat.mean()), "std": float(flat.std())})
    classes, largest_share = {}, None
    if label is not None:
        parts, n = ndimage.label(label > 0, structure=np.ones((3, 3, 3), dtype=bool))
        if n:
            sizes = np.bincount(parts.ravel())[1:]
            largest_share = round(float(sizes.max() / sizes.sum()), 6)
        for cls in np.unique(label):
            if cls == 0:
                continue
            part = label == cls
            _, n = ndimage.label(part, structure=np.ones((3, 3, 3), dtype=bool))
            classes[str(int(cls))] = {"voxels": int(part.sum()), "components": int(n)}
    return {"name": case.name, "sources": source_stamp(case), "spacing": list(ref.spacing),
            "shape": list(ref.array.shape), "channels": channels, "classes": classes,
            "foreground_largest_share": largest_share,
            "boxes": len(case.boxes) if case.boxes is not None else None}


def fingerprint_dataset(info: DatasetInfo, cache: str | Path | None = None, *, workers: int = 2,
                        progress: bool = True) -> dict:
    """The fingerprint of every case, reusing the cached entries of unchanged cases in ``cache``
    (a ``fingerprint.json``); the raw per-case entries, the plan summarises them."""
    old = {}
    if cache is not None and Path(cache).is_file():
        try:
            old = {c["name"]: c for c in json.loads(Path(cache).read_text())["cases"]}
        except (OSError, ValueError, KeyError, TypeError):
            old = {}
    keep = {c.name: old[c.name] for c in info.cases
            if c.name in old and old[c.name].get("sources") == source_stamp(c)
            and "foreground_largest_share" in old[c.name]}  # entries of older versions lack it
    todo = [c for c in info.cases if c.name not in keep]
    fresh = _run_all(case_fingerprint, [(c, info) for c in todo], workers, "fingerprint", progress)
    by_name = {**keep, **{f["name"]: f for f in fresh}}
    result = {"version": STORE_VERSION, "dataset": str(info.root), "task": info.task,
              "channel_names": info.channel_names, "labels": info.labels,
              "cases": [by_name[c.name] for c in info.cases]}
    if cache is not None:
        atomic_write_text(Path(cache), json.dumps(result))
    return result
