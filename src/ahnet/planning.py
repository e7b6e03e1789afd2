"""``ahnet plan``: the training recipe derived from a data set's fingerprint and a time budget (nnU-Net-style).

The plan is an editable ``plans.json`` that ``ahnet preprocess`` and ``ahnet train`` read. It holds:

* ``spacing``: the in-plane target (the median in-plane spacing, coarsened so that the median volume is at
  most ``max_inplane_voxels`` across: a CPU cannot learn a 512 x 512 grid in minutes) and the z target
  (the median z spacing when the cases' slice spacings differ by more than 20 %, else each case keeps its own);
* ``normalisation``, per channel: ``ct`` (nnU-Net's CT scheme: clip to the 0.5-99.5 percentiles of the
  foreground of the whole data set, then z-score with the foreground's mean and standard deviation),
  ``liver-window`` (the paper's -125..225 HU window scaled to [0, 1], §4.2) or ``zscore`` (each case by
  its own mean and standard deviation; every modality other than CT);
* ``mcgcn`` and ``ahnet``: backbone, patch, batch, learning rate, epochs and iterations per epoch, the
  iterations chosen from ``time_budget_s`` and each network's step time measured on this machine;
* ``validation``: the share of held-out cases (none below 4 cases: every case is needed for training);
* ``intensity_augmentation``: contrast, brightness and noise changes per patch on top of the paper's
  geometric ones (:class:`~ahnet.data.sampling.IntensityAugment`);
* ``dice_loss`` (segmentation): a soft Dice term added to the cross-entropy and its focal form, as
  nnU-Net trains (Dice + CE): it optimises the overlap that is measured, where cross-entropy alone
  leaves an organ's unusual parts near a probability of 0.5;
* ``postprocessing``: ``largest_component`` (segmentation) keeps only the largest connected component of
  the predicted foreground (all classes together) when in every training case that component holds at
  least ``LARGEST_COMPONENT_SHARE`` of the foreground (one organ and what lies in it, as a liver with its
  tumours): islands elsewhere are then false positives (nnU-Net chooses the same step on validation folds);
* ``folds``: K > 1 for K-fold cross-validation, each fold a whole run on the other folds' cases; the
  time budget is shared by the K runs (each gets 1/K of it).
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from .data.intensity import DEFAULT_CT_WINDOW, Intensity
from .data.preprocessing import Preprocessing
from .errors import ConfigError
from .fileio import atomic_write_text
from .tasks import task_for

PLAN_VERSION = 1
SCHEMES = ("ct", "liver-window", "zscore")
#: What a device can afford: in-plane voxels of the median volume, patch voxels, batch, backbone.
DEVICE_LIMITS = {
    # measured on 2 AVX-512 cores (ResNet-18, memory kept): AH-Net 96x96x32 batch 2 0.80 s a step,
    # 128x128x32 1.91 s; MC-GCN 160x160 batch 8 0.70 s, 256x256 1.64 s
    "cpu": {"max_inplane_voxels": 256, "patch_voxels_3d": 96 * 96 * 32, "max_z": 32, "patch_2d": 160,
            "batch_3d": 2, "batch_2d": 8, "backbone": "resnet18"},
    # the paper's settings (§4): ResNet-50, CT patches up to 192 x 192 x 64
    "cuda": {"max_inplane_voxels": 512, "patch_voxels_3d": 192 * 192 * 64, "max_z": 64, "patch_2d": 512,
             "batch_3d": 2, "batch_2d": 16, "backbone": "resnet50"},
}
#: Share of the budget each network trains for, after the reserve for preprocessing, validation and saving.
BUDGET_SHARES = {"reserve": 0.15, "mcgcn": 0.35, "ahnet": 0.65, "ahnet_stage1": 0.25}
ITERS_PER_EPOCH = 50
#: Share of every training case's foreground its largest connected component must hold for the plan to
#: keep only the largest component of predictions (one organ a scan).
LARGEST_COMPONENT_SHARE = 0.95


def parse_duration(text: str | float | int) -> float:
    """Seconds of ``30m``, ``12h``, ``1h30m``, ``90s`` or a plain number of seconds."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        s = text.strip().lower()
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", s)
        if not s or parts is None:
            raise ConfigError(f"time budget {text!r}: use e.g. 30m, 12h, 1h30m or 900s")
        h, m, sec = (float(p) if p else 0.0 for p in parts.groups())
        seconds = 3600 * h + 60 * m + sec
    if not seconds > 0:
        raise ConfigError(f"time budget must be positive, got {text!r}")
    return seconds


def _round_down(value: float, multiple: int, minimum: int) -> int:
    return max(minimum, int(value // multiple) * multiple)


def make_plan(fingerprint: dict, time_budget_s: float | None = None, device: str = "cpu",
              step_times: dict[str, float] | None = None, ct_scheme: str = "ct", folds: int = 1) -> dict[str, Any]:
    """The plan of a data set from its fingerprint (see the module docstring).

    ``step_times`` gives the seconds one training step of ``mcgcn`` and ``ahnet`` takes at the planned
    sizes; without it they are measured here (:func:`measure_step_s`) when a time budget is given.
    """
    if ct_scheme not in SCHEMES:
        raise ConfigError(f"CT normalisation must be one of {', '.join(SCHEMES)}, got {ct_scheme!r}")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    limits = DEVICE_LIMITS[kind]
    cases = fingerprint["cases"]
    if not cases:
        raise ConfigError("the fingerprint holds no cases")
    if folds < 1 or (folds > 1 and folds > len(cases)):
        raise ConfigError(f"--folds {folds}: use 1 (no cross-validation) or 2..{len(cases)} for this data set "
                          f"of {len(cases)} case(s)")
    spacing = np.array([c["spacing"] for c in cases], dtype=float)
    shape = np.array([c["shape"] for c in cases], dtype=float)
    inplane = float(np.median(spacing[:, :2]))
    extent_mm = float(np.median(shape[:, :2] * spacing[:, :2]))
    inplane = max(inplane, extent_mm / limits["max_inplane_voxels"])
    z_min, z_max = float(spacing[:, 2].min()), float(spacing[:, 2].max())
    z_target = float(np.median(spacing[:, 2])) if z_max > 1.2 * z_min else None
    z_spacing = spacing[:, 2] if z_target is None else np.full(len(cases), z_target)
    planned_xy = float(np.median(shape[:, :2] * spacing[:, :2] / inplane))
    planned_z = float(np.median(shape[:, 2] * spacing[:, 2] / z_spacing))

    normalisation = []
    for index, name in sorted(fingerprint["channel_names"].items(), key=lambda kv: int(kv[0])):
        samples = np.concatenate([np.asarray(c["channels"][int(index)]["samples"], dtype=float) for c in cases])
        if name.strip().upper() == "CT" and ct_scheme != "zscore":
            if ct_scheme == "liver-window":
                normalisation.append({"channel": name, "scheme": "liver-window", "clip": list(DEFAULT_CT_WINDOW)})
            else:
                lo, hi = (float(v) for v in np.percentile(samples, [0.5, 99.5]))
                normalisation.append({"channel": name, "scheme": "ct", "clip": [round(lo, 2), round(hi, 2)],
                                      "mean": round(float(samples.mean()), 4),
                                      "std": round(max(float(samples.std()), 1e-3), 4)})
        else:
            normalisation.append({"channel": name, "scheme": "zscore"})

    z = min(limits["max_z"], _round_down(planned_z, 8, 8))
    xy = min(_round_down(math.sqrt(limits["patch_voxels_3d"] / z), 32, 32), _round_down(planned_xy, 32, 32))
    xy2d = min(limits["patch_2d"], _round_down(planned_xy, 32, 32))
    n = len(cases)
    task = task_for(fingerprint["task"])
    plan: dict[str, Any] = {
        "version": PLAN_VERSION, "dataset": fingerprint.get("dataset"), "task": fingerprint["task"],
        "device": kind, "time_budget_s": time_budget_s,
        "spacing": {"inplane": round(inplane, 4), "z": None if z_target is None else round(z_target, 4)},
        "normalisation": normalisation,
        "mcgcn": {"backbone": limits["backbone"], "patch": [xy2d, xy2d], "batch_size": limits["batch_2d"],
                  "lr": 5e-4, "epochs": 10, "iters_per_epoch": ITERS_PER_EPOCH, "pretrained": None},
        "ahnet": {"backbone": limits["backbone"], "patch": [xy, xy, z], "batch_size": limits["batch_3d"],
                  "lr": 1e-3, "stage1_epochs": 3, "epochs": 10, "iters_per_epoch": ITERS_PER_EPOCH},
        "validation": {"fraction": 0.2 if n >= 4 else 0.0, "patches": 4},
        "folds": folds,
        "positive_ratio": 0.7,
        # contrast, shift and noise per patch: a few training scans do not cover other phases and scanners
        "intensity_augmentation": True,
        "dice_loss": task.dice_loss,
        "postprocessing": {"largest_component": task.label_maps and all(
            (c.get("foreground_largest_share") or 0.0) >= LARGEST_COMPONENT_SHARE for c in cases)},
    }
    if time_budget_s is not None:
        if step_times is None:
            step_times = measure_plan_steps(plan, fingerprint, device)
        plan["measured_step_s"] = {k: round(v, 4) for k, v in step_times.items()}
        train_s = time_budget_s * (1 - BUDGET_SHARES["reserve"]) / folds
        iters_2d = train_s * BUDGET_SHARES["mcgcn"] / step_times["mcgcn"]
        iters_3d = train_s * BUDGET_SHARES["ahnet"] / step_times["ahnet"]
        plan["mcgcn"]["epochs"] = max(1, round(iters_2d / ITERS_PER_EPOCH))
        stage1 = max(1, round(iters_3d * BUDGET_SHARES["ahnet_stage1"] / ITERS_PER_EPOCH))
        plan["ahnet"]["stage1_epochs"] = stage1
        plan["ahnet"]["epochs"] = max(1, round(iters_3d / ITERS_PER_EPOCH) - stage1)
    return plan


def plan_preprocessing(plan: dict) -> Preprocessing:
    """The :class:`Preprocessing` a plan asks for (the one ``preprocess``, training and ``predict`` use)."""
    try:
        intensities = []
        for entry in plan["normalisation"]:
            scheme = entry["scheme"]
            if scheme == "ct":
                intensities.append(Intensity("clip-zscore", tuple(entry["clip"]), float(entry["mean"]),
                                             float(entry["std"])))
            elif scheme == "liver-window":
                intensities.append(Intensity("ct", tuple(entry.get("clip") or DEFAULT_CT_WINDOW)))
            elif scheme == "zscore":
                intensities.append(Intensity("zscore"))
            else:
                raise ConfigError(f"normalisation scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
        return Preprocessing(plan["task"], tuple(intensities), plan["spacing"]["inplane"],
                             z_spacing=plan["spacing"]["z"])
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"the plan is not usable ({type(err).__name__}: {err})") from None


def measure_step_s(model_name: str, channels: int, out_channels: int, backbone: str, patch, batch: int,
                   device: str = "cpu", steps: int = 3) -> float:
    """Seconds of one training step (forward, backward, Adam) at these sizes on this machine, after a warm-up."""
    import torch
    import torch.nn.functional as F

    from .models.factory import MODEL_DIMS, build_model

    from .memory import keep_freed_memory

    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cpu":
        keep_freed_memory()  # as training does: without it, page faults would double the steps measured
    model = build_model(model_name, channels, out_channels, backbone).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=dev.type in ("cpu", "cuda"))
    dims = MODEL_DIMS[model_name]
    shape = (batch, 3 * channels if dims == 2 else channels, *patch[:dims])
    x = torch.randn(shape, device=dev)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        out = model(x)
        target = torch.zeros(out.shape[0], *out.shape[2:], dtype=torch.long, device=dev)
        loss = F.cross_entropy(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def measure_plan_steps(plan: dict, fingerprint: dict, device: str = "cpu") -> dict[str, float]:
    channels = len(fingerprint["channel_names"])
    out = task_for(plan["task"]).out_channels(fingerprint["labels"])
    m, a = plan["mcgcn"], plan["ahnet"]
    return {"mcgcn": measure_step_s("mc-gcn", channels, out, m["backbone"], m["patch"], m["batch_size"], device),
            "ahnet": measure_step_s("ahnet", channels, out, a["backbone"], a["patch"], a["batch_size"], device)}


def write_plan(plan: dict, path: str | Path) -> Path:
    return atomic_write_text(Path(path), json.dumps(plan, indent=2) + "\n")


def read_plan(path: str | Path) -> dict:
    path = Path(path)
    try:
        plan = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no plan here; write one with `ahnet plan DATASET`") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable plan ({err})") from None
    if not isinstance(plan, dict) or plan.get("version") != PLAN_VERSION:
        raise ConfigError(f"{path}: not an ahnet plan of version {PLAN_VERSION}")
    plan_preprocessing(plan)  # fails now, naming the file, rather than in the middle of training
    return plan
