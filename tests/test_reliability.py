"""Reliability (issue 7): every bad input gets one clear error, crashes lose nothing, untrusted files
stay harmless.

* The bad-input catalogue: each case runs through the CLI (exit code 2, one message naming the file
  or case and the rule broken, no traceback) and the Python API (a typed AhnetError with the same
  message), and leaves nothing half-written in the output folder.
* Crash safety: training and prediction killed with SIGKILL at random moments (subprocesses) and
  resumed; SIGTERM / SIGINT stop training cleanly with a checkpoint.
* Untrusted files: checkpoints cannot run code, configuration is JSON only, paths cannot escape.
* Robustness: property-based tests of the parsers and the size logic; flat memory over many volumes.
"""

from __future__ import annotations

import errno
import gzip
import json
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import torch

from ahnet import AhnetError, CheckpointError, ConfigError, DataError, OutputError, ResourceError
from ahnet.cli import main
from ahnet.data.intensity import Intensity
from ahnet.data.sampling import Preprocessing
from ahnet.evaluation.detection import Detection, evaluate_detection, write_detections_csv
from ahnet.evaluation.segmentation import evaluate_segmentation
from ahnet.inference import predict
from ahnet.models.factory import build_model, model_meta
from ahnet.training import TrainConfig, Trainer, load_checkpoint, save_checkpoint, transfer_checkpoint

from datasets import (PIXDIM_OFFSET, SCL_SLOPE_OFFSET, image_array, label_array, make_det_dataset, make_seg_dataset,
                      patch_header_float, write_nifti)

SRC = Path(__file__).resolve().parents[1] / "src" / "ahnet"
SHAPE = (20, 18, 6)  # make_seg_dataset's volumes


# ------------------------------------------------------------------------------------- helpers

def make_checkpoint(path: Path, task: str = "seg", model: str = "3d-unet", out_channels: int = 3,
                    patch=(16, 16, 4), weights: dict | None = None, backbone: str = "resnet18") -> Path:
    """A training checkpoint of an untrained network (prediction only needs its weights and settings)."""
    state = weights if weights is not None else build_model(model, 1, out_channels, backbone).state_dict()
    save_checkpoint(path, {
        "kind": "train", "model_meta": model_meta(model, 1, out_channels, backbone, "paper"), "model": state,
        "config": {"patch": list(patch)}, "epoch": 1, "stage": 0, "optimizer": {}, "loss_schedule": {},
        "best_metric": 0.0, "rng": {},
        "preprocessing": Preprocessing(task, Intensity.for_modality("CT" if task == "seg" else "DBT")).to_dict(),
    })
    return path


def files_in(folder: Path | None) -> list[str]:
    """Every file under ``folder`` (hidden temporary files included)."""
    if folder is None or not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("ahnet ")]


TRAIN_OPTS = ["--model", "3d-unet", "--patch", "16x16x4", "--epochs", "1", "--iters-per-epoch", "1",
              "--batch-size", "2", "--workers", "0", "--val-patches", "1", "--device", "cpu"]


def train_config(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model="3d-unet", patch=(16, 16, 4), epochs=1, iters_per_epoch=1,
                batch_size=2, workers=0, val_patches=1, device="cpu")
    return TrainConfig(**{**base, **kw})


@dataclass
class Case:
    """One bad input: the same job through the CLI and the API, and what both must report."""

    cli: list[str]
    api: Callable[[], object]
    error: type
    match: str                       # regex both messages must match
    names: list[str]                 # file / case names the message must mention
    out: Path | None = None          # output folder that must hold nothing half-written
    keep: list[str] = field(default_factory=list)  # complete outputs that may be there
    same_message: bool = True        # the CLI prints exactly the API's message


class Env:
    """Per-case scratch space plus shared fixtures."""

    def __init__(self, tmp: Path, checkpoint: Path, monkeypatch):
        self.tmp, self.checkpoint, self.monkeypatch = tmp, checkpoint, monkeypatch

    # -- predict one file ---------------------------------------------------------------------
    def predict_case(self, image: Path, match: str, error=DataError, names=None, extra_cli=(), **api) -> Case:
        out = self.tmp / "pred"
        cli = ["predict", "-m", str(self.checkpoint), "-i", str(image), "-o", str(out), "--device", "cpu",
               *extra_cli]
        return Case(cli, lambda: predict(self.checkpoint, image, out, device="cpu", progress=False, **api), error,
                    match, names if names is not None else [image.name], out)

    def good_image(self, name="vol.nii.gz", shape=SHAPE) -> Path:
        return write_nifti(self.tmp / "in" / name, image_array(shape), (0.8, 0.8, 3.0))

    # -- train on a data set --------------------------------------------------------------------
    def seg_data(self, cases: int = 3) -> Path:
        return make_seg_dataset(self.tmp / "data", cases=cases, shape=SHAPE)

    def train_case(self, data: Path, match: str, names, error=DataError, cli_extra=(), **kw) -> Case:
        out = self.tmp / "run"
        cli = ["train3d", "--data", str(data), "--out", str(out), *TRAIN_OPTS, *cli_extra]
        return Case(cli, lambda: Trainer(train_config(data, out, **kw), progress=False).fit(), error, match,
                    names, out)


# ------------------------------------------------------------------------------ the catalogue

CATALOGUE: dict[str, Callable[[Env], Case]] = {}


def case(fn):
    CATALOGUE[fn.__name__] = fn
    return fn


# -- files that are not a good 3D NIfTI volume (through `ahnet predict`) -------------------------

@case
def truncated_nii_gz(env):
    p = env.good_image("trunc.nii.gz")
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:1500]))
    return env.predict_case(p, r"trunc\.nii\.gz: data cannot be read .*truncated or corrupt")


@case
def corrupt_gzip_stream(env):
    p = env.good_image("corrupt.nii.gz")
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 64] = bytes(64)
    p.write_bytes(bytes(raw))
    return env.predict_case(p, r"corrupt\.nii\.gz: .*(truncated or corrupt|not a readable NIfTI)")


@case
def not_a_nifti(env):
    p = env.tmp / "in" / "notes.nii.gz"
    p.parent.mkdir(parents=True)
    p.write_text("patient notes, not an image\n" * 20)
    return env.predict_case(p, r"notes\.nii\.gz: not a readable NIfTI file")


@case
def empty_file(env):
    p = env.tmp / "in" / "empty.nii.gz"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"")
    return env.predict_case(p, r"empty\.nii\.gz: empty file \(0 bytes\)")


@case
def image_2d(env):
    p = write_nifti(env.tmp / "in" / "flat.nii.gz", image_array((20, 18)), (0.8, 0.8))
    return env.predict_case(p, r"flat\.nii\.gz: volume must be 3D, got 2D")


@case
def image_4d(env):
    p = write_nifti(env.tmp / "in" / "series.nii.gz", image_array((20, 18, 6, 2)), (0.8, 0.8, 3.0, 1.0))
    return env.predict_case(p, r"series\.nii\.gz: volume must be 3D, got 4D")


@case
def nan_voxels(env):
    a = image_array(SHAPE)
    a[3, 4, 2] = np.nan
    p = write_nifti(env.tmp / "in" / "nan.nii.gz", a, (0.8, 0.8, 3.0))
    return env.predict_case(p, r"nan\.nii\.gz: image has 1 NaN or Inf voxels")


@case
def inf_voxels(env):
    a = image_array(SHAPE)
    a[0, 0, 0] = -np.inf
    p = write_nifti(env.tmp / "in" / "inf.nii.gz", a, (0.8, 0.8, 3.0))
    return env.predict_case(p, r"inf\.nii\.gz: image has 1 NaN or Inf voxels")


@case
def header_scaling_overflow(env):
    a = (np.arange(np.prod(SHAPE)) % 3000).reshape(SHAPE).astype(np.int16)
    p = write_nifti(env.tmp / "in" / "scaled.nii", a, (0.8, 0.8, 3.0))
    patch_header_float(p, SCL_SLOPE_OFFSET, 3e38)
    return env.predict_case(p, r"scaled\.nii: data cannot be decoded: scaling .* overflows to Inf")


def _spacing_case(env, value, name):
    p = env.good_image(name)
    patch_header_float(p, PIXDIM_OFFSET + 4 * 2, value)  # pixdim[2]: the y voxel size
    return env.predict_case(p, re.escape(name) + r": voxel size \(header pixdim\) must be positive and finite")


@case
def zero_spacing(env):
    return _spacing_case(env, 0.0, "zero_sp.nii.gz")


@case
def negative_spacing(env):
    return _spacing_case(env, -0.8, "neg_sp.nii.gz")


@case
def nan_spacing(env):
    return _spacing_case(env, float("nan"), "nan_sp.nii.gz")


@case
def volume_too_large_for_memory(env):
    """A header claiming 30000 x 30000 x 3000 voxels: refused from the header alone, before any read."""
    import ahnet.inference.run as run

    env.monkeypatch.setattr(run, "available_memory", lambda: 16 * 2**30)  # the same figure both ways
    p = env.good_image("huge.nii")
    raw = bytearray(p.read_bytes())
    raw[42:48] = np.array([30000, 30000, 3000], dtype="<i2").tobytes()
    p.write_bytes(bytes(raw))
    return env.predict_case(p, r"huge\.nii: case 'huge': a volume of shape \(30000, 30000, 3000\) .* needs about "
                               r"[0-9.]+ GiB of memory to predict, more than the 16\.00 GiB available", error=ResourceError)


@case
def volume_over_max_memory_option(env):
    p = env.good_image("big.nii.gz")
    limit_gb = 1e-6
    return env.predict_case(p, r"big\.nii\.gz: case 'big': .* more than the 0\.00 GiB allowed \(max_memory\)",
                            error=ResourceError, extra_cli=["--max-memory", str(limit_gb)],
                            max_memory=limit_gb * 2**30)


@case
def volume_over_available_memory(env):
    import ahnet.inference.run as run

    env.monkeypatch.setattr(run, "available_memory", lambda: 2**16)  # a machine with 64 KiB free
    p = env.good_image("tight.nii.gz")
    return env.predict_case(p, r"tight\.nii\.gz: case 'tight': .* more than the 0\.00 GiB available",
                            error=ResourceError)


@case
def duplicate_case_names_in_predict_input(env):
    env.good_image("liver_0000.nii.gz")
    env.good_image("liver_0000.nii")
    return env.predict_case(env.tmp / "in", r"case 'liver': duplicate case name: liver_0000\.nii(\.gz)? and "
                                             r"liver_0000\.nii(\.gz)? are both its channel 0000",
                            names=["liver"])


# -- data sets (through `ahnet train3d`) -------------------------------------------------------

def _relabel(data: Path, case_name: str, array, spacing=(0.8, 0.8, 3.0), affine=None, dtype=None) -> Path:
    return write_nifti(data / "labelsTr" / f"{case_name}.nii.gz", array, spacing, affine=affine, dtype=dtype)


@case
def image_and_label_shapes_differ(env):
    data = env.seg_data()
    _relabel(data, "case_001", label_array((20, 18, 5)))
    return env.train_case(data, r"case case_001: label .*case_001\.nii\.gz: shape \(20, 18, 5\) differs from the "
                                r"image .* shape \(20, 18, 6\)", ["case_001"])


@case
def same_shape_different_affine(env):
    data = env.seg_data()
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    affine[:3, 3] = [5.0, 0.0, 0.0]
    _relabel(data, "case_002", label_array(SHAPE), affine=affine)
    return env.train_case(data, r"case case_002: label .*case_002\.nii\.gz: affine differs from the image .* not on "
                                r"the same grid", ["case_002"])


@case
def label_values_not_in_dataset_json(env):
    data = env.seg_data()
    lab = label_array(SHAPE)
    lab[0, 0, 0] = 7
    for c in ("case_000", "case_001", "case_002"):  # whichever is read first
        _relabel(data, c, lab)
    return env.train_case(data, r"case (case_00\d): .*labelsTr/\1\.nii\.gz: label values \[7\] are not in "
                                r"dataset\.json's labels \[0, 1, 2\]", ["labelsTr"])


@case
def float_labels(env):
    """Through a DataLoader worker (val_fraction 0): the worker's traceback is not shown."""
    data = env.seg_data()
    for c in ("case_000", "case_001", "case_002"):  # whichever is read first
        _relabel(data, c, label_array(SHAPE).astype(np.float32) + 0.5)
    return env.train_case(data, r"labelsTr/case_00\d\.nii\.gz: label has \d+ non-integer voxel values", ["labelsTr"],
                          cli_extra=["--workers", "1", "--val-fraction", "0"], workers=1, val_fraction=0.0)


@case
def image_without_label(env):
    data = env.seg_data()
    (data / "labelsTr" / "case_001.nii.gz").unlink()
    return env.train_case(data, r"case 'case_001': no label .*case_001\.nii\.gz", ["case_001"])


@case
def label_without_image(env):
    data = env.seg_data()
    (data / "imagesTr" / "case_002_0000.nii.gz").unlink()
    return env.train_case(data, r"case_002\.nii\.gz: label of case 'case_002' has no image", ["case_002"])


@case
def wrong_channel_suffix(env):
    data = env.seg_data()
    (data / "imagesTr" / "case_000_0000.nii.gz").rename(data / "imagesTr" / "case_000_0.nii.gz")
    return env.train_case(data, r"case_000_0\.nii\.gz: image name must end in a 4-digit channel suffix",
                          ["case_000_0.nii.gz"])


@case
def undeclared_channel(env):
    data = env.seg_data()
    write_nifti(data / "imagesTr" / "case_001_0001.nii.gz", image_array(SHAPE), (0.8, 0.8, 3.0))
    return env.train_case(data, r"case_001_0001\.nii\.gz: case 'case_001' has channel 0001 but dataset\.json "
                                r"declares only channel\(s\) 0000", ["case_001_0001.nii.gz"])


@case
def malformed_dataset_json(env):
    data = env.seg_data()
    (data / "dataset.json").write_text('{"channel_names": {"0": "CT"}, "labels": ')
    return env.train_case(data, r"dataset\.json: not valid JSON", ["dataset.json"])


@case
def missing_dataset_json(env):
    data = env.seg_data()
    (data / "dataset.json").unlink()
    return env.train_case(data, r"dataset\.json: not found", ["dataset.json"])


@case
def num_training_disagrees(env):
    data = env.seg_data()
    meta = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**meta, "numTraining": 5}))
    return env.train_case(data, r"dataset\.json: numTraining is 5 but imagesTr holds 3 cases", ["dataset.json"])


@case
def duplicate_case_names(env):
    data = env.seg_data()
    write_nifti(data / "imagesTr" / "CASE_000_0000.nii.gz", image_array(SHAPE), (0.8, 0.8, 3.0))
    write_nifti(data / "labelsTr" / "CASE_000.nii.gz", label_array(SHAPE), (0.8, 0.8, 3.0))
    return env.train_case(data, r"duplicate case names \['CASE_000', 'case_000'\] \(they differ only in case\)",
                          ["CASE_000", "case_000"])


def _det_case(env, boxes: dict | str, match: str, names) -> Case:
    data = make_det_dataset(env.tmp / "data", cases=3, shape=(24, 20, 5))
    (data / "boxesTr.json").write_text(boxes if isinstance(boxes, str) else json.dumps(boxes))
    return env.train_case(data, match, names)


@case
def box_outside_the_volume(env):
    return _det_case(env, {"case_000": [], "case_001": [[2, 2, 1, 30, 6, 3]], "case_002": []},
                     r"case case_001: box 0 \[2, 2, 1, 30, 6, 3\] lies outside the volume .*case_001_0000\.nii\.gz",
                     ["case_001"])


@case
def box_inverted(env):
    return _det_case(env, {"case_000": [], "case_001": [[8, 2, 1, 3, 6, 3]], "case_002": []},
                     r"boxesTr\.json: case 'case_001': box 0 is inverted on x", ["case_001", "boxesTr.json"])


@case
def box_not_integer(env):
    return _det_case(env, {"case_000": [], "case_001": [[2.5, 2, 1, 6, 6, 3]], "case_002": []},
                     r"boxesTr\.json: case 'case_001': box 0 must hold integers only", ["case_001"])


@case
def duplicate_case_in_boxes(env):
    text = '{"case_000": [], "case_001": [], "case_002": [], "case_001": [[1, 1, 1, 2, 2, 2]]}'
    return _det_case(env, text, r"boxesTr\.json: duplicate key 'case_001'", ["case_001"])


@case
def volume_smaller_than_the_patch(env):
    data = env.seg_data()
    return env.train_case(data, r"case case_000: axis X has 20 voxels, less than half the patch's 64.*"
                                r"case_000_0000\.nii\.gz", ["case_000"],
                          cli_extra=["--patch", "64x16x4"], patch=(64, 16, 4))


@case
def dataset_json_with_file_paths(env):
    """nnU-Net's explicit file lists could point anywhere (``/etc``, ``..``): never followed."""
    data = env.seg_data()
    meta = json.loads((data / "dataset.json").read_text())
    meta["dataset"] = {"case_000": {"images": ["/etc/passwd"], "label": "../../outside.nii.gz"}}
    (data / "dataset.json").write_text(json.dumps(meta))
    return env.train_case(data, r"dataset\.json: the 'dataset' key \(explicit file paths\) is not supported.*never "
                                r"follows paths", ["dataset.json"])


# -- checkpoints -------------------------------------------------------------------------------

@case
def file_that_is_not_a_checkpoint(env):
    bad = env.tmp / "model.pt"
    bad.write_bytes(os.urandom(2048))
    env.checkpoint = bad
    return env.predict_case(env.good_image(), r"model\.pt: not a readable ahnet checkpoint", CheckpointError,
                            names=["model.pt"])


@case
def torchvision_weights_instead_of_a_checkpoint(env):
    p = env.tmp / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(2, 3, 1, 1)}, p)
    env.checkpoint = p
    return env.predict_case(env.good_image(), r"resnet\.pth: not an ahnet checkpoint", CheckpointError,
                            names=["resnet.pth"])


@case
def weights_of_another_network(env):
    """A checkpoint that says AH-Net/resnet18 but holds 3D U-Net weights."""
    env.checkpoint = make_checkpoint(env.tmp / "mixed.pt", model="ahnet",
                                     weights=build_model("3d-unet", 1, 3).state_dict())
    return env.predict_case(env.good_image(), r"mixed\.pt: weights do not fit this network", CheckpointError,
                            names=["mixed.pt"])


@case
def init_checkpoint_of_another_backbone(env):
    data = env.seg_data()
    init = env.tmp / "init.pt"
    save_checkpoint(init, {"kind": "transfer", "model": {},
                           "model_meta": model_meta("ahnet", 1, 3, "resnet34", "paper")})
    case = env.train_case(data, r"init\.pt: transferred into a ahnet with backbone 'resnet34', but this run asks for "
                                r"backbone 'resnet18'", ["init.pt"], CheckpointError,
                          cli_extra=["--model", "ahnet", "--backbone", "resnet18", "--init", str(init)],
                          model="ahnet", backbone="resnet18", init=str(init), stage1_epochs=1)
    return case


@case
def transfer_from_a_3d_checkpoint(env):
    out = env.tmp / "t" / "init.pt"
    return Case(["transfer", str(env.checkpoint), "--out", str(out)],
                lambda: transfer_checkpoint(env.checkpoint, out), CheckpointError,
                r"holds a '3d-unet'; transfer needs an mc-gcn checkpoint", [env.checkpoint.name], out.parent)


# -- outputs -----------------------------------------------------------------------------------

@case
def output_folder_under_a_file(env):
    blocker = env.tmp / "blocker"
    blocker.write_text("a file where a folder should be")
    out = blocker / "pred"
    image = env.good_image()
    return Case(["predict", "-m", str(env.checkpoint), "-i", str(image), "-o", str(out), "--device", "cpu"],
                lambda: predict(env.checkpoint, image, out, device="cpu", progress=False), OutputError,
                r"blocker/pred: the output folder cannot be created: a part of the path is a file", ["blocker"])


@case
def output_folder_without_write_permission(env):
    if os.geteuid() == 0:
        # root ignores permissions: refuse the write where the OS would (EACCES on creating a file)
        import ahnet.fileio as fileio

        real = fileio.tempfile.mkstemp

        def mkstemp(*a, dir=None, **kw):
            if Path(dir) == env.tmp / "locked":
                raise PermissionError(errno.EACCES, "Permission denied")
            return real(*a, dir=dir, **kw)

        env.monkeypatch.setattr(fileio.tempfile, "mkstemp", mkstemp)
    out = env.tmp / "locked"
    out.mkdir()
    out.chmod(0o555)
    image = env.good_image()
    return Case(["predict", "-m", str(env.checkpoint), "-i", str(image), "-o", str(out), "--device", "cpu"],
                lambda: predict(env.checkpoint, image, out, device="cpu", progress=False), OutputError,
                r"locked: the output folder is not writable: permission denied", ["locked"], out)


@case
def disk_full_while_writing_a_prediction(env):
    def full_disk(img, filename):
        Path(filename).write_bytes(b"\x00" * 100)  # part of the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    image = env.good_image()
    env.monkeypatch.setattr(nib, "save", full_disk)
    return env.predict_case(image, r"pred/vol\.nii\.gz: cannot write: no space left on the device",
                            OutputError, names=["vol.nii.gz"])


@case
def disk_full_while_saving_a_checkpoint(env):
    real = torch.save

    def full_disk(obj, f, *a, **kw):
        if getattr(f, "name", "").endswith(".tmp"):
            f.write(b"\x00" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **kw)

    env.monkeypatch.setattr(torch, "save", full_disk)
    data = env.seg_data()
    return env.train_case(data, r"run/checkpoint_latest\.pt: cannot write: no space left on the device",
                          ["checkpoint_latest.pt"], OutputError)


def _seg_folders(env, pred_cases=("a", "b"), gt_cases=("a", "b")):
    for folder, cases in (("p", pred_cases), ("g", gt_cases)):
        for c in cases:
            write_nifti(env.tmp / folder / f"{c}.nii.gz", label_array((8, 8, 4)), dtype=np.uint8)
    return env.tmp / "p", env.tmp / "g"


@case
def disk_full_while_writing_evaluation(env):
    pred, gt = _seg_folders(env)
    out = env.tmp / "eval"

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    env.monkeypatch.setattr(os, "fsync", full_disk)
    return Case(["evaluate", "seg", "--pred", str(pred), "--gt", str(gt), "--classes", "lits", "--json",
                 str(out / "dice.json")],
                lambda: evaluate_segmentation(pred, gt, json_out=out / "dice.json", progress=False, classes="lits"), OutputError,
                r"dice\.json: cannot write: no space left on the device", ["dice.json"], out)


# -- evaluation inputs -------------------------------------------------------------------------

def _det_eval(env, csv_text: str | None, match: str, names, boxes=None) -> Case:
    csv_path, boxes_path = env.tmp / "det.csv", env.tmp / "boxes.json"
    if csv_text is None:
        write_detections_csv(csv_path, [Detection("a", 1, 1, 1, 0.9), Detection("zzz", 2, 2, 2, 0.5)])
    else:
        csv_path.write_text(csv_text)
    boxes_path.write_text(json.dumps(boxes or {"a": [[0, 0, 0, 3, 3, 3]], "b": []}))
    out = env.tmp / "eval"
    return Case(["evaluate", "det", "--pred", str(csv_path), "--boxes", str(boxes_path), "--json",
                 str(out / "froc.json")],
                lambda: evaluate_detection(csv_path, boxes_path, json_out=out / "froc.json"), DataError, match, names,
                out)


@case
def detections_csv_missing_columns(env):
    return _det_eval(env, "case,x,y,score\na,1,2,0.5\n", r"det\.csv: missing column\(s\) z", ["det.csv"])


@case
def unknown_case_in_detection_evaluation(env):
    return _det_eval(env, None, r"detections for case\(s\) 'zzz'", ["zzz"])


@case
def unknown_case_in_segmentation_evaluation(env):
    pred, gt = _seg_folders(env, pred_cases=("a", "b", "extra"))
    out = env.tmp / "eval"
    return Case(["evaluate", "seg", "--pred", str(pred), "--gt", str(gt), "--classes", "lits", "--json",
                 str(out / "dice.json")],
                lambda: evaluate_segmentation(pred, gt, json_out=out / "dice.json", progress=False, classes="lits"), DataError,
                r"extra", ["extra"], out)


@case
def boxes_with_a_path_as_case_name(env):
    return _det_eval(env, "case,x,y,z,score\na,1,1,1,0.5\n", r"boxes\.json: invalid case name '\.\./\.\./etc'",
                     ["../../etc"], boxes={"a": [], "../../etc": []})


@case
def classes_option_not_json(env):
    pred, gt = _seg_folders(env)
    return Case(["evaluate", "seg", "--pred", str(pred), "--gt", str(gt), "--classes", "{liver: [1, 2]"],
                lambda: evaluate_segmentation(pred, gt, classes="{liver: [1, 2]", progress=False), ConfigError,
                r"classes", ["classes"], same_message=False)


def test_catalogue_has_at_least_30_cases():
    assert len(CATALOGUE) >= 30


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint_best.pt")


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_bad_input(name, tmp_path, checkpoint, monkeypatch, capsys):
    bad = CATALOGUE[name](Env(tmp_path, checkpoint, monkeypatch))
    try:
        code = main(bad.cli)
        out, err = capsys.readouterr()
        assert code == 2, out + err
        assert "Traceback" not in out + err
        lines = error_lines(err)
        assert len(lines) == 1, err  # one message ...
        message = lines[0]
        assert re.match(rf"ahnet {bad.cli[0]}: error: ", message)
        assert re.search(bad.match, message), message  # ... naming the rule broken ...
        for name_ in bad.names:  # ... and the file or case
            assert name_ in message, (name_, message)
        assert files_in(bad.out) == bad.keep  # nothing half-written

        with pytest.raises(bad.error, match=bad.match) as info:
            bad.api()
        assert isinstance(info.value, AhnetError)
        if bad.same_message:
            assert message == f"ahnet {bad.cli[0]}: error: {info.value}"  # the same message both ways
        assert files_in(bad.out) == bad.keep
        assert not multiprocessing.active_children()  # no DataLoader worker outlives a failed run
    finally:
        if bad.out is not None and bad.out.exists():
            bad.out.chmod(0o755)


# --------------------------------------------------------------------------------- crash safety

SUBPROCESS_ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
KILL_TRAIN = dict(model="3d-unet", patch=(16, 16, 4), batch_size=2, epochs=5, iters_per_epoch=3, workers=0,
                  val_patches=1, device="cpu", seed=3, augment=False)


def _train_cmd(data: Path, out: Path) -> list[str]:
    c = KILL_TRAIN
    return [sys.executable, "-m", "ahnet.cli", "train3d", "--data", str(data), "--out", str(out), "--model", c["model"],
            "--patch", "x".join(map(str, c["patch"])), "--batch-size", str(c["batch_size"]), "--epochs",
            str(c["epochs"]), "--iters-per-epoch", str(c["iters_per_epoch"]), "--workers", "0", "--val-patches",
            str(c["val_patches"]), "--device", "cpu", "--seed", str(c["seed"]), "--no-augment"]


def _checkpoint_id(path: Path):
    try:
        st = path.stat()
        return st.st_ino, st.st_mtime_ns
    except FileNotFoundError:
        return None


def _wait_for_new_file(path: Path, old, proc: subprocess.Popen, timeout: float = 180.0) -> bool:
    """Until ``path`` is replaced (a new checkpoint); False if the process ended first."""
    end = time.time() + timeout
    while time.time() < end:
        if _checkpoint_id(path) not in (None, old):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise AssertionError(f"no new {path.name} within {timeout} s")


def _assert_run_folder_readable(out: Path) -> dict:
    """Every checkpoint in the folder loads; returns the latest."""
    for p in out.glob("*.pt"):
        load_checkpoint(p, kind="train")
    return load_checkpoint(out / "checkpoint_latest.pt", kind="train")


def test_training_killed_at_random_moments_resumes_without_losing_work(tmp_path, capsys):
    """SIGKILL twice at random moments, then SIGTERM: every checkpoint stays readable, each
    resume starts from the last checkpoint (at most the epoch in progress is lost, and after SIGTERM
    nothing), and the finished run equals an uninterrupted one."""
    data = make_seg_dataset(tmp_path / "data", cases=3, shape=SHAPE)
    out = tmp_path / "run"
    latest = out / "checkpoint_latest.pt"
    rng = random.Random(20180612)
    cmd = _train_cmd(data, out)
    progress = []  # (epoch, iteration) of checkpoint_latest after each interruption
    for round_ in range(3):
        resume = ["--resume"] if latest.exists() else []
        proc = subprocess.Popen(cmd + resume, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=SUBPROCESS_ENV,
                                text=True)
        try:
            started = _wait_for_new_file(latest, _checkpoint_id(latest), proc)
            assert started, proc.communicate()
            time.sleep(rng.uniform(0.0, 1.2))  # somewhere in the next epoch, or inside a checkpoint write
            if round_ < 2:
                proc.kill()
                proc.wait(timeout=30)
            else:
                proc.send_signal(signal.SIGTERM)
                _, err = proc.communicate(timeout=120)
                finished = load_checkpoint(latest, kind="train")["epoch"] == KILL_TRAIN["epochs"]
                if proc.returncode == 0 or (finished and proc.returncode == -signal.SIGTERM):
                    break  # the run had already finished (the signal came during its exit): nothing to stop
                assert proc.returncode == 128 + signal.SIGTERM, err
                assert "interrupted by SIGTERM" in err and "continue with --resume" in err
                assert "Traceback" not in err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        saved = _assert_run_folder_readable(out)
        step = (int(saved["epoch"]), int(saved.get("iteration", 0)))
        assert not progress or step > progress[-1]  # every run moved on from where the last one stopped
        assert len(saved["history"]) == saved["epoch"]  # the checkpoint's log is its own epochs, once each
        progress.append(step)

    # The last resume runs in this process (the same CLI, one thread like the subprocesses), and
    # so does the same run without interruptions: both end with the same weights and losses.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(cmd[3:] + ["--resume"]) == 0
        Trainer(TrainConfig(data=str(data), out=str(tmp_path / "straight"), **KILL_TRAIN), progress=False).fit()
    finally:
        torch.set_num_threads(threads)
    final = _assert_run_folder_readable(out)
    assert final["epoch"] == KILL_TRAIN["epochs"]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == list(range(KILL_TRAIN["epochs"]))  # each epoch exactly once
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint_latest.pt", kind="train")
    assert [h["train_loss"] for h in final["history"]] == pytest.approx(
        [h["train_loss"] for h in straight["history"]], rel=1e-5)
    for key, value in straight["model"].items():
        assert torch.allclose(final["model"][key].float(), value.float(), rtol=1e-4, atol=1e-6), key


def test_sigint_finishes_the_step_saves_and_resume_is_exact(tmp_path, monkeypatch, capsys):
    """Ctrl-C in the middle of an epoch: the step in progress completes, checkpoint_latest.pt records
    the epoch and step, the CLI exits with 130, and --resume continues from that very step: the run
    ends exactly as an uninterrupted one."""
    from ahnet.data.sampling import PatchDataset

    data = make_seg_dataset(tmp_path / "data", cases=3, shape=SHAPE)
    cfg = dict(model="3d-unet", patch=(16, 16, 4), batch_size=2, epochs=2, iters_per_epoch=3, workers=0,
               val_patches=1, device="cpu", augment=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    handler = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN in a shell's background job
    try:
        Trainer(TrainConfig(data=str(data), out=str(tmp_path / "straight"), **cfg), progress=False).fit()

        real = PatchDataset.__getitem__

        def getitem(self, index):  # Ctrl-C while the second batch of epoch 1 is being sampled
            if index == 3 * 2 + 2:
                os.kill(os.getpid(), signal.SIGINT)
            return real(self, index)

        monkeypatch.setattr(PatchDataset, "__getitem__", getitem)
        code = main(["train3d", "--data", str(data), "--out", str(tmp_path / "run"), "--model", "3d-unet", "--patch",
                     "16x16x4", "--batch-size", "2", "--epochs", "2", "--iters-per-epoch", "3", "--workers", "0",
                     "--val-patches", "1", "--device", "cpu", "--no-augment"])
        err = capsys.readouterr().err
        assert code == 130
        assert error_lines(err) == [f"ahnet train3d: interrupted by SIGINT in epoch 1; checkpoint saved to "
                                    f"{tmp_path / 'run' / 'checkpoint_latest.pt'}; continue with --resume"]
        saved = load_checkpoint(tmp_path / "run" / "checkpoint_latest.pt", kind="train")
        assert (saved["epoch"], saved["iteration"]) == (1, 2)  # the step in progress was finished and kept
        assert signal.getsignal(signal.SIGINT) is handler  # handlers restored

        monkeypatch.setattr(PatchDataset, "__getitem__", real)
        result = Trainer(TrainConfig(data=str(data), out=str(tmp_path / "run"), workers=0, device="cpu"),
                         resume=True, progress=False).fit()
        assert result["interrupted"] is None and result["epochs"] == 2
    finally:
        torch.set_num_threads(threads)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint_latest.pt")
    b = load_checkpoint(tmp_path / "run" / "checkpoint_latest.pt")
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_second_signal_stops_at_once():
    from ahnet.training.stopping import StopSignals

    handler = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even in a background job
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.signum == signal.SIGINT  # the first only asks to stop
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signal.signal(signal.SIGINT, handler)


def _predict_inputs(folder: Path, cases: int, shape=(48, 48, 12)) -> list[Path]:
    return [write_nifti(folder / f"vol{i}_0000.nii.gz", image_array(shape, seed=i), (0.8, 0.8, 3.0))
            for i in range(cases)]


def test_predict_killed_then_rerun_finishes_the_rest(tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "model.pt", patch=(32, 32, 8))
    inputs = _predict_inputs(tmp_path / "in", 5)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ahnet.cli", "predict", "-m", str(checkpoint), "-i", str(tmp_path / "in"), "-o",
           str(out), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=SUBPROCESS_ENV)
    try:
        end = time.time() + 120
        while not list(out.glob("vol*.nii.gz")) and proc.poll() is None and time.time() < end:
            time.sleep(0.02)
        time.sleep(random.Random(7).uniform(0.0, 0.6))
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {p.name: _checkpoint_id(p) for p in out.glob("vol*.nii.gz")}
    assert before  # at least one case was finished before the kill
    for name in before:  # what is there under a final name is complete
        assert nib.load(out / name).get_fdata().shape == (48, 48, 12)

    assert main(cmd[3:]) == 0  # the rerun, in this process
    stdout = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [f"vol{i}.nii.gz" for i in range(5)]  # no temporary files
    for name, ident in before.items():
        assert _checkpoint_id(out / name) == ident  # finished cases were kept, not predicted again
    if len(before) < 5:
        assert f"{len(before)} already predicted" in stdout


def test_predict_skips_finished_cases_and_overwrite_redoes_them(tmp_path):
    """Detection: a rerun rebuilds detections.csv from the kept heatmaps, identical to a fresh run;
    stale temporary files of a killed run are removed."""
    checkpoint = make_checkpoint(tmp_path / "det.pt", task="det", out_channels=1, patch=(16, 16, 4))
    _predict_inputs(tmp_path / "in", 3, shape=(24, 20, 6))
    out = tmp_path / "out"
    kw = dict(device="cpu", progress=False, threshold=0.0, top_k=5)
    first = predict(checkpoint, tmp_path / "in", out, **kw)
    assert first["skipped"] == 0 and first["detections"] > 0
    csv_text = (out / "detections.csv").read_text()
    kept = _checkpoint_id(out / "vol0_heatmap.nii.gz")
    (out / "vol1_heatmap.nii.gz").unlink()
    (out / "detections.csv").unlink()
    (out / ".vol1_heatmap.nii.gz.k3j9x2ab.nii.gz").write_bytes(b"half a file")  # left by a kill
    second = predict(checkpoint, tmp_path / "in", out, **kw)
    assert second["skipped"] == 2
    assert (out / "detections.csv").read_text() == csv_text
    assert _checkpoint_id(out / "vol0_heatmap.nii.gz") == kept
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    third = predict(checkpoint, tmp_path / "in", out, overwrite=True, **kw)
    assert third["skipped"] == 0 and _checkpoint_id(out / "vol0_heatmap.nii.gz") != kept
    assert (out / "detections.csv").read_text() == csv_text


# ------------------------------------------------------------------------------- untrusted files

class _Exploit:
    """Unpickling this runs a shell command: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_cannot_run_code(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "ahnet-checkpoint", "kind": "train", "model": _Exploit(marker)}, evil)
    with pytest.raises(CheckpointError, match=r"evil\.pt: not a readable ahnet checkpoint"):
        load_checkpoint(evil)
    image = write_nifti(tmp_path / "in" / "vol.nii.gz", image_array(SHAPE), (0.8, 0.8, 3.0))
    assert main(["predict", "-m", str(evil), "-i", str(image), "-o", str(tmp_path / "out"), "--device", "cpu"]) == 2
    assert main(["transfer", str(evil), "--out", str(tmp_path / "t.pt")]) == 2
    from ahnet.models.resnet import load_torchvision_weights, resnet18

    torch.save({"conv1.weight": _Exploit(marker)}, tmp_path / "evil_resnet.pth")
    with pytest.raises(CheckpointError, match="not a readable PyTorch weight file"):
        load_torchvision_weights(resnet18(), tmp_path / "evil_resnet.pth")
    assert not marker.exists()  # nothing ran
    assert "Traceback" not in capsys.readouterr().err


def _sources() -> dict[Path, str]:
    return {p: p.read_text() for p in SRC.rglob("*.py")}


def test_every_torch_load_is_weights_only():
    calls = [(p.name, m.group(0)) for p, text in _sources().items()
             for m in re.finditer(r"torch\.load\((?:[^()]|\([^()]*\))*\)", text)]
    assert calls  # the pattern finds them
    assert all("weights_only=True" in call for _, call in calls), calls


def test_configuration_is_parsed_as_json_only():
    """No pickle, YAML, eval or exec anywhere: dataset.json, boxes, --classes and checkpoints' settings
    are plain JSON / tensors."""
    for path, text in _sources().items():
        for pattern in (r"^\s*import (pickle|dill|shelve|marshal|yaml)\b", r"^\s*from (pickle|yaml)\b",
                        r"(?<![\w.])(eval|exec)\(", r"yaml\.(unsafe_)?load", r"pickle\.loads?\("):
            assert not re.search(pattern, text, re.M), (path.name, pattern)


def test_paths_cannot_escape_the_data_set(tmp_path):
    """Files are found by listing imagesTr/labelsTr only: a symlink pointing outside is refused,
    dataset.json cannot name files (catalogue), boxes name cases, not paths (catalogue)."""
    from ahnet.data.dataset import load_dataset

    data = make_seg_dataset(tmp_path / "data", cases=2, shape=SHAPE)
    secret = write_nifti(tmp_path / "elsewhere" / "secret.nii.gz", label_array(SHAPE), (0.8, 0.8, 3.0))
    (data / "labelsTr" / "case_001.nii.gz").unlink()
    (data / "labelsTr" / "case_001.nii.gz").symlink_to(Path("..") / ".." / "elsewhere" / secret.name)
    with pytest.raises(DataError, match=r"case_001\.nii\.gz: resolves to .*secret\.nii\.gz, outside the data set"):
        load_dataset(data)


# ---------------------------------------------------------------------------- property-based

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_scalars = st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=False) | st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
texts = st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1"))
boxes_like = st.dictionaries(st.text(max_size=8), st.lists(st.lists(st.integers(-3, 40) | st.floats(-3, 40)
                                                                     | st.text(max_size=2), max_size=7), max_size=3),
                             max_size=4)


@pytest.fixture(scope="module")
def parse_root(tmp_path_factory) -> Path:
    return make_seg_dataset(tmp_path_factory.mktemp("parse") / "data", cases=2, shape=(8, 8, 3))


def _parses_or_ahnet_error(fn) -> None:
    try:
        fn()
    except AhnetError:
        pass  # anything else (KeyError, TypeError, RecursionError, ...) fails the test


@PROPERTY
@given(meta=st.one_of(json_values, st.fixed_dictionaries(
    {"channel_names": json_values | st.just({"0": "CT"}), "labels": json_values | st.just({"background": 0, "a": 1}),
     "numTraining": json_values | st.just(2), "file_ending": json_values | st.just(".nii.gz")},
    optional={"dataset": json_values})), raw=st.none() | texts)
@example(meta=None, raw="[" * 100_000)  # nesting deeper than the recursion limit
@example(meta=None, raw='{"numTraining": ' + "9" * 5000 + "}")  # an integer Python refuses to convert
def test_dataset_json_parses_or_raises_ahnet_error(parse_root, meta, raw):
    from ahnet.data.dataset import load_dataset

    (parse_root / "dataset.json").write_text(raw if raw is not None else json.dumps(meta), encoding="utf-8",
                                             errors="surrogatepass")
    _parses_or_ahnet_error(lambda: load_dataset(parse_root))


@PROPERTY
@given(boxes=boxes_like | json_values, raw=st.none() | texts)
@example(boxes=None, raw="{\"a\": " + "[" * 100_000)
@example(boxes=None, raw='{"a": [[' + "1" * 5000 + ", 1, 1, 2, 2, 2]]}")
def test_boxes_json_parses_or_raises_ahnet_error(tmp_path, boxes, raw):
    from ahnet.evaluation.detection import read_boxes_json

    p = tmp_path / "boxes.json"
    p.write_text(raw if raw is not None else json.dumps(boxes), errors="surrogatepass")
    try:
        parsed = read_boxes_json(p)
    except AhnetError:
        return
    for case_name, bs in parsed.items():  # what parses is valid
        assert "/" not in case_name and all(len(b) == 6 and b[0] <= b[3] and min(b) >= 0 for b in bs)


@PROPERTY
@given(rows=st.lists(st.lists(st.text(max_size=5) | st.integers(-5, 50).map(str) | st.floats().map(repr), max_size=6),
                     max_size=5),
       header=st.permutations(["case", "x", "y", "z", "score", "extra"]).map(lambda h: h[:st_len(h)]),
       raw=st.none() | texts)
def test_detections_csv_parses_or_raises_ahnet_error(tmp_path, rows, header, raw):
    import csv
    import io

    from ahnet.evaluation.detection import read_detections_csv

    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    p = tmp_path / "det.csv"
    p.write_text(raw if raw is not None else buf.getvalue(), errors="surrogatepass")
    try:
        detections = read_detections_csv(p)
    except AhnetError:
        return
    assert all(min(d.x, d.y, d.z) >= 0 and np.isfinite(d.score) for d in detections)


def st_len(header):
    return 4 + len(header) % 3  # 4, 5 or 6 columns: sometimes one of the five is missing


@settings(max_examples=80, deadline=None)
@given(size=st.lists(st.integers(1, 40), min_size=2, max_size=3),
       multiple=st.lists(st.integers(1, 16), min_size=3, max_size=3))
def test_padding_round_trip(size, multiple):
    from ahnet.models.padding import crop_spatial, pad_to_multiple, padded_size

    multiple = multiple[:len(size)]
    target = padded_size(size, multiple)
    assert all(s <= t < s + m and t % m == 0 for s, t, m in zip(size, target, multiple))
    x = torch.randn(1, 2, *size)
    padded, crop = pad_to_multiple(x, multiple)
    assert tuple(padded.shape[2:]) == target
    assert torch.equal(crop_spatial(padded, crop), x)  # the crop takes back exactly the input


@settings(max_examples=80, deadline=None)
@given(shape=st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 6)),
       size=st.tuples(st.integers(1, 16), st.integers(1, 16), st.integers(1, 8)),
       start=st.tuples(st.integers(-20, 20), st.integers(-20, 20), st.integers(-10, 10)))
def test_patch_crop_is_the_volume_where_inside_and_zero_outside(shape, size, start):
    from ahnet.data.sampling import crop

    a = np.arange(1, np.prod(shape) + 1, dtype=np.float32).reshape(shape)
    out = crop(a, start, size)
    assert out.shape == size
    for idx in [(0, 0, 0), tuple(s - 1 for s in size), tuple(s // 2 for s in size)]:
        src = tuple(st_ + i for st_, i in zip(start, idx))
        inside = all(0 <= c < n for c, n in zip(src, shape))
        assert out[idx] == (a[src] if inside else 0)


@settings(max_examples=80, deadline=None)
@given(shape=st.tuples(st.integers(1, 300), st.integers(1, 300), st.integers(1, 80)),
       patch=st.tuples(st.integers(1, 256), st.integers(1, 256), st.integers(1, 64)))
def test_patch_fits_exactly_when_no_axis_is_under_half_the_patch(shape, patch):
    from ahnet.data.sampling import check_patch_fits

    fits = all(s >= p / 2 for s, p in zip(shape, patch))
    try:
        check_patch_fits(shape, patch, "c")
        assert fits
    except DataError:
        assert not fits


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.tuples(st.integers(1, 3000), st.integers(1, 3000), st.integers(1, 3000)),
       limit=st.integers(1, 2**40))
def test_memory_check_refuses_exactly_what_exceeds_the_limit(checkpoint, shape, limit):
    from ahnet.data.volume import Header
    from ahnet.inference import Predictor

    predictor = _predictor(checkpoint)
    header = Header("v.nii.gz", shape, (1.0, 1.0, 3.0), np.eye(4), (0, 1, 2), np.dtype(np.float32))
    need = predictor.memory_needed([header])
    assert need >= np.prod(shape) * 4 * (1 + 3)  # at least the image and the 3 class probabilities
    try:
        predictor.check_memory("v", [header], limit)
        assert need <= limit
    except ResourceError as err:
        assert need > limit and "v.nii.gz" in str(err)


_PREDICTORS: dict = {}


def _predictor(checkpoint):
    from ahnet.inference import Predictor

    if checkpoint not in _PREDICTORS:
        _PREDICTORS[checkpoint] = Predictor(checkpoint, device="cpu")
    return _PREDICTORS[checkpoint]


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=20))
def test_cli_size_option_parses_or_is_a_usage_error(text):
    import argparse

    from ahnet.cli import _size

    try:
        size = _size(text)
    except argparse.ArgumentTypeError:
        return
    assert len(size) == 3 and min(size) >= 1


# --------------------------------------------------------------------------------- memory

def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_predicting_many_volumes_keeps_memory_flat(tmp_path, monkeypatch):
    """20 volumes of 128 x 128 x 24 in one process: resident memory after them stays within a
    generous bound of what it was after a warm-up (each volume's outputs alone are ~5 MB, so
    keeping them would add ~100 MB). The network is a 1x1x1 convolution, as only the pipeline
    around it (reading, sliding window, softmax, writing) is under test."""
    import gc

    import ahnet.inference.predictor as predictor_module

    tiny = lambda meta: torch.nn.Conv3d(1, 3, 1)  # noqa: E731
    monkeypatch.setattr(predictor_module, "model_from_meta", tiny)
    checkpoint = make_checkpoint(tmp_path / "tiny.pt", weights=tiny(None).state_dict(), patch=(128, 128, 24))
    source = write_nifti(tmp_path / "source.nii.gz", image_array((128, 128, 24)), (0.8, 0.8, 3.0))
    for folder, n in (("warm", 4), ("many", 20)):
        for i in range(n):
            (tmp_path / folder).mkdir(exist_ok=True)
            (tmp_path / folder / f"v{i}_0000.nii.gz").symlink_to(source)

    predict(checkpoint, tmp_path / "warm", tmp_path / "out_warm", device="cpu", progress=False)
    gc.collect()
    before = _rss_bytes()
    result = predict(checkpoint, tmp_path / "many", tmp_path / "out_many", device="cpu", progress=False)
    gc.collect()
    growth = _rss_bytes() - before
    assert result["cases"] == 20 and len(list((tmp_path / "out_many").glob("*.nii.gz"))) == 20
    assert growth < 48 * 2**20, f"resident memory grew by {growth / 2**20:.0f} MiB over 20 volumes"
