"""``ahnet train DATASET --out RUN``: the paper's whole procedure from one command, per a plan (§3.4, §4).

1. fingerprint the data set and write the plan (``RUN/plans.json``, unless one is given or already there);
2. preprocess every case once into the data set's store (``DATASET/preprocessed/<settings>``);
3. train MC-GCN on 3-slice stacks (``RUN/mcgcn``), transfer its encoder into AH-Net (Eq. 1-3,
   ``RUN/ahnet_init.pt``), train AH-Net's decoder with the encoder frozen, then all of it (``RUN/ahnet``).

The run is resumable as one: ``RUN/run.json`` records the steps done, and the same command again
continues where a crash or Ctrl-C stopped it (a step in progress resumes from its latest checkpoint).
The step commands (``train2d``, ``transfer``, ``train3d``) stay for experts; ``ahnet predict -m RUN``
takes the run folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .data.dataset import DatasetInfo, load_dataset
from .data.store import fingerprint_dataset, preprocess_dataset, settings_key
from .errors import ConfigError
from .fileio import atomic_write_text, ensure_output_dir
from .planning import make_plan, parse_duration, plan_preprocessing, read_plan, write_plan

#: The checkpoint of a finished run that ``predict -m RUN`` uses.
FINAL_CHECKPOINT = Path("ahnet") / "checkpoint_best.pt"


def store_folder(dataset: str | Path, plan: dict, work: str | Path | None = None) -> Path:
    """Where the cases prepared by a plan's settings live: one folder per settings, so plans coexist."""
    base = Path(work) if work else Path(dataset) / "preprocessed"
    return base / settings_key(plan_preprocessing(plan))


def plan_dataset(dataset: str | Path | DatasetInfo, out: str | Path | None = None, *, time_budget: str | float | None = None,
                 device: str = "cpu", work: str | Path | None = None, ct_scheme: str = "ct", workers: int = 2,
                 folds: int = 1, progress: bool = True) -> tuple[dict, Path]:
    """Fingerprint ``dataset`` (cached in the work folder) and write its plan to ``out``
    (default ``DATASET/preprocessed/plans.json``); returns the plan and its path."""
    info = _info(dataset)
    base = Path(work) if work else info.root / "preprocessed"
    ensure_output_dir(base, "preprocessed folder")
    fingerprint = fingerprint_dataset(info, base / "fingerprint.json", workers=workers, progress=progress)
    budget = parse_duration(time_budget) if time_budget is not None else None
    plan = make_plan(fingerprint, budget, device=_device_kind(device), ct_scheme=ct_scheme, folds=folds)
    path = Path(out) if out else base / "plans.json"
    write_plan(plan, path)
    return plan, path


def preprocess(dataset: str | Path | DatasetInfo, plan: dict, *, work: str | Path | None = None, workers: int = 2,
               progress: bool = True):
    """Prepare every case that is not current for ``plan`` (see :mod:`ahnet.data.store`)."""
    info = _info(dataset)
    return preprocess_dataset(info, plan_preprocessing(plan), store_folder(info.root, plan, work),
                              workers=workers, progress=progress)


def _info(dataset: str | Path | DatasetInfo) -> DatasetInfo:
    return dataset if isinstance(dataset, DatasetInfo) else load_dataset(dataset)


def _device_kind(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def train_run(dataset: str | Path, out: str | Path, *, time_budget: str | float | None = None,
              plan_file: str | Path | None = None, pretrained: str | None = None, device: str = "auto",
              work: str | Path | None = None, workers: int = 2, folds: int | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Run (or continue) the whole procedure in ``out``; returns what was done and where the model(s) are.

    With ``folds`` K > 1 (or a plan with ``"folds": K``), the procedure runs once per fold in
    ``out/fold_k``, each validating on its own fold's cases; ``ahnet predict -m RUN`` then averages
    the K models (nnU-Net's ensemble). The time budget is shared by the folds.
    """
    from .training import TrainConfig, Trainer, transfer_checkpoint

    start = time.time()
    info = load_dataset(dataset)
    run = ensure_output_dir(out, "run folder")
    plan_path = run / "plans.json"
    state = _read_state(run)
    if plan_path.is_file():
        plan = read_plan(plan_path)
        given = [flag for flag, value in (("--plan", plan_file), ("--time-budget", time_budget)) if value is not None]
        if folds is not None and folds != plan.get("folds", 1):
            given.append("--folds")
        if given and state.get("done"):
            raise ConfigError(f"{run} already holds a run with its own plans.json; {' and '.join(given)} cannot "
                              "change it (edit that file before training starts, or use another --out)")
    elif plan_file is not None:
        plan = read_plan(plan_file)
        if folds is not None:
            plan["folds"] = folds
        write_plan(plan, plan_path)
    else:
        plan, _ = plan_dataset(info, plan_path, time_budget=time_budget if time_budget is not None else "30m",
                               device=device, work=work, workers=workers, folds=folds or 1, progress=progress)
    if plan["task"] != info.task:
        raise ConfigError(f"{plan_path}: a plan for a {plan['task']} data set, but {info.root} is {info.task}")
    if pretrained is not None:
        plan["mcgcn"]["pretrained"] = pretrained
    n_folds = int(plan.get("folds", 1))
    if n_folds > len(info.cases):
        raise ConfigError(f"{plan_path}: {n_folds} folds need at least {n_folds} cases; {info.root} has "
                          f"{len(info.cases)}")
    report = preprocess(info, plan, work=work, workers=workers, progress=progress)
    if progress:
        print(report.text(), flush=True)
    store = str(report.root)
    m, a = plan["mcgcn"], plan["ahnet"]
    done = list(state.get("done", []))
    folders = [""] if n_folds == 1 else [f"fold_{k}/" for k in range(n_folds)]
    for fold, folder in enumerate(folders):
        base = run / folder
        common = dict(data=str(info.root), device=device, workers=workers, preprocessed=store,
                      val_fraction=plan["validation"]["fraction"], val_patches=plan["validation"]["patches"],
                      positive_ratio=plan["positive_ratio"], folds=n_folds, fold=fold,
                      intensity_augment=bool(plan.get("intensity_augmentation", False)),
                      dice_loss=bool(plan.get("dice_loss", False)))
        configs = {
            "mcgcn": TrainConfig(out=str(base / "mcgcn"), model="mc-gcn", backbone=m["backbone"],
                                 patch=(*m["patch"], 3), batch_size=m["batch_size"], lr=m["lr"],
                                 epochs=m["epochs"], iters_per_epoch=m["iters_per_epoch"],
                                 pretrained=m.get("pretrained"), **common),
            "ahnet": TrainConfig(out=str(base / "ahnet"), model="ahnet", backbone=a["backbone"],
                                 patch=tuple(a["patch"]), batch_size=a["batch_size"], lr=a["lr"],
                                 stage1_epochs=a["stage1_epochs"], epochs=a["epochs"],
                                 iters_per_epoch=a["iters_per_epoch"], init=str(base / "ahnet_init.pt"),
                                 **common),
        }
        for step in ("mcgcn", "transfer", "ahnet"):
            name = folder + step
            if name in done:
                continue
            if progress:
                print(f"ahnet train: step {name}", flush=True)
            if step == "transfer":
                transfer_checkpoint(base / "mcgcn" / "checkpoint_best.pt", base / "ahnet_init.pt")
            else:
                resume = (base / step / "checkpoint_latest.pt").is_file()
                config = configs[step]
                result = Trainer(config, resume=resume, progress=progress,
                                 changes={"epochs": config.epochs} if resume else None).fit()
                if result.get("interrupted"):
                    _write_state(run, done, folders, info.root, store, start, state, plan)
                    return {"run": str(run), "interrupted": result["interrupted"], "step": name, "done": done}
            done.append(name)
            _write_state(run, done, folders, info.root, store, start, state, plan)
    models = [str(run / folder / FINAL_CHECKPOINT) for folder in folders]
    return {"run": str(run), "interrupted": None, "done": done, "model": models[0] if n_folds == 1 else None,
            "models": models, "seconds": round(time.time() - start, 1)}


def _read_state(run: Path) -> dict:
    try:
        return json.loads((run / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_state(run: Path, done: list[str], folders: list[str], dataset: Path, store: str, start: float,
                 old: dict, plan: dict) -> None:
    spent = float(old.get("seconds", 0.0)) + (time.time() - start)
    finished = all(folder + "ahnet" in done for folder in folders)
    models = [str(Path(folder) / FINAL_CHECKPOINT) for folder in folders] if finished else None
    atomic_write_text(run / "run.json", json.dumps({"dataset": str(dataset), "store": store, "done": done,
                                                    "seconds": round(spent, 1),
                                                    "model": models[0] if models and len(models) == 1 else None,
                                                    "models": models,
                                                    "postprocessing": plan.get("postprocessing", {})}, indent=2))


def run_postprocessing(path: str | Path) -> dict:
    """The post-processing a finished ``ahnet train`` run's plan chose (``{}`` for a checkpoint file or a
    ``train2d`` / ``train3d`` run folder): what ``predict -m RUN`` applies unless told otherwise."""
    p = Path(path)
    return dict(_read_state(p).get("postprocessing") or {}) if p.is_dir() else {}


def resolve_models(path: str | Path) -> list[Path]:
    """The checkpoint(s) ``predict -m`` uses: a checkpoint file; the model of a finished ``ahnet train``
    run folder (its K fold models with ``--folds K``); or a ``train2d`` / ``train3d`` run folder's best."""
    p = Path(path)
    if p.is_dir():
        state = _read_state(p)
        if state.get("models"):
            return [p / m for m in state["models"]]
        if state.get("model"):
            return [p / state["model"]]
        if (p / "checkpoint_best.pt").is_file():  # a train2d / train3d run folder
            return [p / "checkpoint_best.pt"]
        raise ConfigError(f"{p}: neither a finished `ahnet train` run (no model in run.json) nor a run folder "
                          "with checkpoint_best.pt; finish the run with the same `ahnet train` command")
    return [p]
