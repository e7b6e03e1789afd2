"""Data sets in the nnU-Net v2 raw format, plus boxes for detection (DBT-style) data sets.

Layout of a data set folder::

    dataset.json           channel_names, labels, numTraining, file_ending
    imagesTr/{case}_{XXXX}{file_ending}   one file per channel, XXXX = 4-digit channel index
    labelsTr/{case}{file_ending}          segmentation (optional in a detection set)
    boxesTr.json           detection sets only: {case: [[x0, y0, z0, x1, y1, z1], ...]}
    imagesTs/              optional, not read here

Boxes are inclusive voxel indices along the NIfTI data array's axes 0, 1, 2 (file axes, not network
axes: see :func:`ahnet.data.volume.boxes_to_network`); an empty list marks a negative volume.

Two levels of checking: :func:`load_dataset` checks the structure only (names, dataset.json, boxes)
and reads no image data, so it is cheap enough to run at the start of every command;
:func:`verify_dataset` reads every file and collects all problems in one report, so that a user
fixes a data set in one pass instead of one error at a time.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import DataError
from ..tasks import dataset_task, task_for
from .volume import _check_box, load_volume

_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
#: endings that look like a NIfTI volume: such a file with another ending than file_ending is an error
_NIFTI_ENDINGS = (".nii", ".nii.gz")
AFFINE_TOL = 1e-4


@dataclass
class CaseFiles:
    """The files of one training case."""

    name: str
    images: list[Path]  # one per channel, channel order
    label: Path | None
    boxes: list[tuple[int, int, int, int, int, int]] | None  # file axes, None when not a detection set


@dataclass
class DatasetInfo:
    """What :func:`load_dataset` found: dataset.json's fields and the cases, sorted by name."""

    root: Path
    channel_names: dict[str, str]
    labels: dict[str, int]
    file_ending: str
    num_training: int
    cases: list[CaseFiles]
    task: str  # the name of its task (ahnet.tasks.dataset_task): detection where boxesTr.json exists

    @property
    def modality(self) -> str:
        """The first channel's name (e.g. "CT"): it decides the intensity normalisation."""
        return self.channel_names["0"]

    @property
    def num_classes(self) -> int:
        """Number of segmentation classes, background included."""
        return len(self.labels)


@dataclass
class VerifyReport:
    """All problems :func:`verify_dataset` found, and a summary of the data."""

    root: Path
    cases: int
    problems: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        lines = [f"data set {self.root}: {self.cases} cases, "
                 + ("no problems" if self.ok else f"{len(self.problems)} problem(s)")]
        lines += [f"  problem: {p}" for p in self.problems]
        for key, value in self.summary.items():
            lines.append(f"  {key}: {value}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ load_dataset

def load_dataset(root) -> DatasetInfo:
    """Check a data set's structure and list its cases; reads no image data.

    Raises :class:`DataError` naming the file or case and the rule broken.
    """
    root_in = Path(root)
    if not root_in.is_dir():
        raise DataError(f"{root_in}: data set folder not found")
    root_res = root_in.resolve()

    meta_path = root_in / "dataset.json"
    meta = _read_json(meta_path, root_res)
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: must hold a JSON object, got {type(meta).__name__}")
    missing = [k for k in ("channel_names", "labels", "numTraining", "file_ending") if k not in meta]
    if missing:
        raise DataError(f"{meta_path}: missing key(s) {', '.join(missing)}")
    if "dataset" in meta:  # nnU-Net's explicit file lists: paths that could point anywhere
        raise DataError(f"{meta_path}: the 'dataset' key (explicit file paths) is not supported: ahnet reads "
                        "only the files inside imagesTr/ and labelsTr/ and never follows paths from dataset.json")
    channel_names = _check_channel_names(meta["channel_names"], meta_path)
    labels = _check_labels(meta["labels"], meta_path)
    file_ending = _check_file_ending(meta["file_ending"], meta_path)
    num_training = meta["numTraining"]
    if isinstance(num_training, bool) or not isinstance(num_training, int) or num_training < 0:
        raise DataError(f"{meta_path}: numTraining must be a non-negative integer, got {num_training!r}")

    images_dir = root_in / "imagesTr"
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: imagesTr folder not found")
    _inside(images_dir, root_res)
    images = _scan_images(images_dir, file_ending, len(channel_names), root_res)
    if not images:
        raise DataError(f"{images_dir}: no image files ending in {file_ending!r}")

    boxes_path = root_in / "boxesTr.json"
    task = dataset_task(root_in)

    labels_dir = root_in / "labelsTr"
    label_files: dict[str, Path] = {}
    if labels_dir.exists() or labels_dir.is_symlink():
        if not labels_dir.is_dir():
            raise DataError(f"{labels_dir}: labelsTr is not a folder")
        _inside(labels_dir, root_res)
        label_files = _scan_labels(labels_dir, file_ending, root_res)
    elif task.needs_labels:
        raise DataError(f"{labels_dir}: labelsTr folder not found (a {task.title} data set needs labels)")

    for case, path in label_files.items():
        if case not in images:
            hint = ""
            if _CHANNEL_RE.match(case):
                hint = f" (label files carry no channel suffix: {{case}}{file_ending})"
            raise DataError(f"{path}: label of case {case!r} has no image "
                            f"{case}_0000{file_ending} in imagesTr{hint}")
    if task.needs_labels:
        for case in images:
            if case not in label_files:
                raise DataError(f"case {case!r}: no label {labels_dir / (case + file_ending)}")

    boxes = _read_boxes(boxes_path, root_res, set(images)) if task.needs_boxes else None

    if num_training != len(images):
        raise DataError(f"{meta_path}: numTraining is {num_training} but imagesTr holds "
                        f"{len(images)} cases")

    cases = [
        CaseFiles(name=case, images=images[case], label=label_files.get(case),
                  boxes=None if boxes is None else boxes[case])
        for case in sorted(images)
    ]
    return DatasetInfo(root=root_res, channel_names=channel_names, labels=labels,
                       file_ending=file_ending, num_training=num_training, cases=cases, task=task.name)


def _no_duplicate_keys(path: Path):
    def hook(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise DataError(f"{path}: duplicate key {k!r}")
            seen.add(k)
        return dict(pairs)
    return hook


def _read_json(path: Path, root_res: Path):
    if not (path.exists() or path.is_symlink()):
        raise DataError(f"{path}: not found")
    _inside(path, root_res)
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from e
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e
    except (ValueError, RecursionError) as e:  # e.g. an integer with thousands of digits, deep nesting
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None


def _check_channel_names(value, meta_path: Path) -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        raise DataError(f"{meta_path}: channel_names must be a non-empty object like {{\"0\": \"CT\"}}")
    for k, v in value.items():
        if not isinstance(v, str):
            raise DataError(f"{meta_path}: channel_names[{k!r}] must be a string, got {v!r}")
        if not re.fullmatch(r"\d+", k):
            raise DataError(f"{meta_path}: channel_names key {k!r} is not a channel index")
    indices = sorted(int(k) for k in value)
    if indices != list(range(len(value))) or any(k != str(int(k)) for k in value):
        raise DataError(f"{meta_path}: channel_names keys must be \"0\", \"1\", ... without gaps, "
                        f"got {list(value)}")
    return {str(i): value[str(i)] for i in indices}


def _check_labels(value, meta_path: Path) -> dict[str, int]:
    """Names to distinct integers, background 0, values consecutive: the rule of nnU-Net v2's
    dataset format (documentation/dataset_format.md), which also lets a label value index a class
    channel directly (``num_classes == len(labels)``)."""
    if not isinstance(value, dict) or not value:
        raise DataError(f"{meta_path}: labels must be a non-empty object mapping names to integers")
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, int):
            raise DataError(f"{meta_path}: labels[{k!r}] must be an integer, got {v!r} "
                            "(region-based labels are not supported)")
    if "background" in value and value["background"] != 0:
        raise DataError(f"{meta_path}: labels['background'] must be 0, got {value['background']}")
    values = list(value.values())
    if len(set(values)) != len(values):
        dup = [v for v, n in Counter(values).items() if n > 1]
        raise DataError(f"{meta_path}: labels must map names to distinct integers; {dup} used twice")
    if 0 not in values:
        raise DataError(f"{meta_path}: labels must include the background as 0")
    if sorted(values) != list(range(len(values))):
        raise DataError(f"{meta_path}: label values must be consecutive 0, 1, 2, ..., got {sorted(values)}")
    return dict(value)


def _check_file_ending(value, meta_path: Path) -> str:
    if not isinstance(value, str):
        raise DataError(f"{meta_path}: file_ending must be a string like \".nii.gz\", got {value!r}")
    if value not in _NIFTI_ENDINGS:
        raise DataError(f"{meta_path}: file_ending {value!r} is not supported: ahnet reads NIfTI "
                        "(.nii.gz or .nii)")
    return value


def _inside(path: Path, root_res: Path) -> Path:
    """Resolve ``path`` (following symlinks) and refuse it unless it stays inside the data set."""
    res = path.resolve()
    if not res.is_relative_to(root_res):
        raise DataError(f"{path}: resolves to {res}, outside the data set folder {root_res}")
    return res


def _entries(folder: Path, file_ending: str):
    """Files of ``folder`` with ``file_ending``; stray non-NIfTI files and hidden files are
    ignored, but a NIfTI file with another ending than declared is an error (likely a mistake)."""
    try:
        listing = sorted(folder.iterdir())
    except OSError as e:
        raise DataError(f"{folder}: cannot be listed ({e})") from e
    for p in listing:
        name = p.name
        if name.startswith("."):
            continue
        if not name.endswith(file_ending):
            if name.endswith(_NIFTI_ENDINGS):
                raise DataError(f"{p}: file ending does not match dataset.json's file_ending "
                                f"{file_ending!r}")
            continue
        yield p, name[: -len(file_ending)]


def _check_case_name(case: str, path: Path) -> None:
    if not case or case in (".", "..") or "/" in case or "\\" in case:
        raise DataError(f"{path}: invalid case name {case!r}")


def _no_case_collisions(names, folder: Path) -> None:
    """Case names differing only in upper/lower case collide on macOS and Windows file systems."""
    by_lower = defaultdict(list)
    for n in names:
        by_lower[n.lower()].append(n)
    for group in by_lower.values():
        if len(group) > 1:
            raise DataError(f"{folder}: duplicate case names {sorted(group)} (they differ only in case)")


def _scan_images(images_dir: Path, file_ending: str, n_channels: int, root_res: Path) -> dict[str, list[Path]]:
    found: dict[str, dict[int, Path]] = defaultdict(dict)
    declared = ", ".join(f"{i:04d}" for i in range(n_channels))
    for p, stem in _entries(images_dir, file_ending):
        m = _CHANNEL_RE.match(stem)
        if not m:
            raise DataError(f"{p}: image name must end in a 4-digit channel suffix "
                            f"({{case}}_XXXX{file_ending}, e.g. {stem}_0000{file_ending})")
        case, channel = m["case"], int(m["channel"])
        _check_case_name(case, p)
        if channel >= n_channels:
            raise DataError(f"{p}: case {case!r} has channel {m['channel']} but dataset.json declares "
                            f"only channel(s) {declared}")
        _inside(p, root_res)
        if not p.is_file():
            raise DataError(f"{p}: not a file")
        found[case][channel] = p
    _no_case_collisions(found, images_dir)
    out = {}
    for case, chans in found.items():
        missing = [f"{i:04d}" for i in range(n_channels) if i not in chans]
        if missing:
            raise DataError(f"case {case!r}: missing channel file(s) "
                            + ", ".join(f"{case}_{c}{file_ending}" for c in missing) + f" in {images_dir}")
        out[case] = [chans[i] for i in range(n_channels)]
    return out


def _scan_labels(labels_dir: Path, file_ending: str, root_res: Path) -> dict[str, Path]:
    out = {}
    for p, case in _entries(labels_dir, file_ending):
        _check_case_name(case, p)
        _inside(p, root_res)
        if not p.is_file():
            raise DataError(f"{p}: not a file")
        out[case] = p
    _no_case_collisions(out, labels_dir)
    return out


def _read_boxes(path: Path, root_res: Path, cases: set[str]) -> dict[str, list[tuple]]:
    data = _read_json(path, root_res)
    if not isinstance(data, dict):
        raise DataError(f"{path}: must hold an object {{case: [[x0, y0, z0, x1, y1, z1], ...]}}, "
                        f"got {type(data).__name__}")
    out = {}
    for case, boxes in data.items():
        if case not in cases:
            raise DataError(f"{path}: boxes for unknown case {case!r} (no such case in imagesTr)")
        if not isinstance(boxes, list):
            raise DataError(f"{path}: case {case!r}: boxes must be a list of [x0, y0, z0, x1, y1, z1] "
                            f"(an empty list for a negative volume), got {boxes!r}")
        checked = []
        for k, box in enumerate(boxes):
            if not isinstance(box, list):
                raise DataError(f"{path}: case {case!r} box {k} must be a list of 6 integers, got {box!r}")
            try:
                checked.append(_check_box(box, f"box {k}"))
            except DataError as e:
                raise DataError(f"{path}: case {case!r}: {e}") from None
        out[case] = checked
    missing = sorted(cases - set(out))
    if missing:
        raise DataError(f"{path}: no entry for case(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                        "(use [] for a negative volume)")
    return out


# ---------------------------------------------------------------------------------- verify_dataset

def verify_dataset(root, progress: bool = True) -> VerifyReport:
    """Read every file of a data set and report all problems found, not only the first.

    Adds to :func:`load_dataset`'s structural checks everything :func:`load_volume` checks, and
    within each case: equal shapes and affines (tolerance 1e-4) of channels and label, the same
    spacing, integer-typed labels whose values dataset.json declares, and boxes inside the volume.
    """
    try:
        info = load_dataset(root)
    except DataError as e:
        return VerifyReport(root=Path(root), cases=0, problems=[str(e)], summary={})

    from tqdm.auto import tqdm

    problems: list[str] = []
    known_values = set(info.labels.values())
    names_by_value = {v: k for k, v in info.labels.items()}
    spacings, shapes, thick_counts = [], [], Counter()
    label_counts: Counter = Counter()
    intensity = [np.inf, -np.inf]
    n_boxes = negatives = 0

    for case in tqdm(info.cases, desc="verify", unit="case", disable=None if progress else True):
        vols = []
        for ch, path in enumerate(case.images):
            try:
                vols.append(load_volume(path))
            except DataError as e:
                problems.append(f"case {case.name!r}: {e}")
                vols.append(None)
        ref = vols[0]
        if ref is not None:
            spacings.append(ref.spacing)
            shapes.append(ref.array.shape)
            thick_counts[ref.axes[2]] += 1
            intensity[0] = min(intensity[0], float(ref.array.min()))
            intensity[1] = max(intensity[1], float(ref.array.max()))
        for ch, vol in enumerate(vols[1:], start=1):
            if vol is not None and ref is not None:
                _compare(ref, vol, f"case {case.name!r}: channel {ch:04d}", "channel 0000", problems)

        if case.label is not None:
            lab = None
            try:
                lab = load_volume(case.label, is_label=True)
            except DataError as e:
                problems.append(f"case {case.name!r}: {e}")
            if lab is not None:
                _check_label_dtype(case, problems)
                if ref is not None:
                    _compare(ref, lab, f"case {case.name!r}: label", "image", problems)
                counts = _value_counts(lab.array)
                unknown = sorted(v for v in counts if v not in known_values)
                if unknown:
                    problems.append(f"case {case.name!r}: {case.label}: label values {unknown[:10]} are "
                                    f"not in dataset.json's labels {sorted(known_values)}")
                for v, n in counts.items():
                    label_counts[names_by_value.get(v, str(v))] += n

        if case.boxes is not None:
            n_boxes += len(case.boxes)
            negatives += not case.boxes
            shape = next((v.file_shape for v in vols if v is not None), None)
            if shape is not None:
                for k, box in enumerate(case.boxes):
                    if any(box[3 + i] >= shape[i] for i in range(3)):
                        problems.append(f"case {case.name!r}: box {k} {list(box)} lies outside the volume "
                                        f"(file shape {shape}, indices are inclusive)")

    summary: dict = {"task": info.task, "modality": info.modality, "channels": len(info.channel_names)}
    if spacings:
        sp = np.array(spacings)
        sh = np.array(shapes)
        summary["spacing_min"] = [round(float(v), 4) for v in sp.min(0)]
        summary["spacing_max"] = [round(float(v), 4) for v in sp.max(0)]
        summary["shape_min"] = [int(v) for v in sh.min(0)]
        summary["shape_max"] = [int(v) for v in sh.max(0)]
        summary["thick_file_axis_counts"] = {int(k): int(v) for k, v in sorted(thick_counts.items())}
        summary["intensity_range"] = [float(intensity[0]), float(intensity[1])]
    if label_counts:
        summary["label_voxels"] = dict(label_counts)
    if task_for(info.task).needs_boxes:
        summary["boxes"] = n_boxes
        summary["negative_cases"] = negatives
    return VerifyReport(root=info.root, cases=len(info.cases), problems=problems, summary=summary)


def _compare(ref, vol, what: str, ref_name: str, problems: list[str]) -> None:
    if vol.file_shape != ref.file_shape:
        problems.append(f"{what} shape {vol.file_shape} differs from the {ref_name} shape {ref.file_shape}")
        return
    if not np.allclose(vol.affine, ref.affine, rtol=0, atol=AFFINE_TOL):
        diff = float(np.abs(vol.affine - ref.affine).max())
        problems.append(f"{what} affine differs from the {ref_name} affine (max difference {diff:.3g}, "
                        f"tolerance {AFFINE_TOL})")
    if not np.allclose(vol.spacing, ref.spacing, rtol=1e-4, atol=0) or vol.axes != ref.axes:
        problems.append(f"{what} voxel size {vol.spacing} differs from the {ref_name} voxel size {ref.spacing}")


def _check_label_dtype(case: CaseFiles, problems: list[str]) -> None:
    """Labels must be stored as integers: a float label invites interpolation and rounding bugs
    even when its values happen to be integral."""
    try:
        img = nib.load(str(case.label))
        dtype = img.get_data_dtype()
        slope, inter = img.dataobj.slope, img.dataobj.inter
    except Exception:  # load_volume already read it; nothing more to say
        return
    if dtype.kind == "f":
        problems.append(f"case {case.name!r}: {case.label}: label stored as float ({dtype}); "
                        "store labels with an integer type")
    elif slope != 1 or inter != 0:
        problems.append(f"case {case.name!r}: {case.label}: label has intensity scaling "
                        f"(scl_slope={slope}, scl_inter={inter}); labels must be stored unscaled")


def _value_counts(arr: np.ndarray) -> dict[int, int]:
    if arr.size == 0:
        return {}
    lo, hi = int(arr.min()), int(arr.max())
    if lo >= 0 and hi < 1 << 16:
        counts = np.bincount(arr.ravel(), minlength=hi + 1)
        return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}
    values, counts = np.unique(arr, return_counts=True)
    return {int(v): int(n) for v, n in zip(values, counts)}
