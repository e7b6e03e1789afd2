"""The paper's comparisons, rerunnable on the built-in phantoms or on any data set (§4, Tables 3-5).

An experiment is data: a task and a list of :class:`Arm` s, each a network trained and evaluated
the same way (same data, patches, iterations and evaluation) so that rows are comparable:

- ``table4``: FROC of 2D U-Net, 3D U-Net, MC-GCN and AH-Net on the DBT-like task (Table 4, Fig. 6);
- ``table5``: Dice global / per case of liver and lesion for the same four on the CT-like task
  (Table 5 style; the paper lists only AH-Net against challenge entries);
- ``ablations``: AH-Net as in the paper against AH-Net trained from scratch, without focal loss,
  without pyramid pooling, and with an isotropic 3x3x3 decoder;
- ``table3`` (timing) is :func:`ahnet.bench.run_bench`.

Each arm writes ``result.json`` into its own folder when done; rerunning the same command skips the
finished arms, so a crash costs at most the arm in progress (an arm finished with another scale or
seed is trained again, never reported as this run's). ``results.md`` and ``results.json``
hold the table, beside the paper's numbers, which come from a GPU and the paper's data, never ours.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, DataError
from .fileio import atomic_write_text


@dataclass(frozen=True)
class Arm:
    """One network of an experiment.

    ``transfer``: an AH-Net initialised from this experiment's MC-GCN (Eq. 1-3) and trained in two
    stages (§3.4); otherwise trained from random weights for as many iterations in total.
    ``options`` override the preset's structure (``AHNetSpec`` fields). ``shown``: ``False`` for an
    arm trained only as the source of the transfer.
    """

    name: str
    model: str
    transfer: bool = False
    focal: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)
    shown: bool = True


@dataclass(frozen=True)
class Scale:
    """Data and training sizes. ``cpu`` runs anywhere in minutes per arm; ``gpu`` is closer to §4."""

    train_cases: int
    test_cases: int
    seg_shape: tuple[int, int, int]
    det_shape: tuple[int, int, int]
    patch2d: tuple[int, int]
    patch3d: tuple[int, int, int]
    backbone: str
    epochs2d: int
    stage1_epochs: int
    epochs3d: int
    iters: int
    batch2d: int
    batch3d: int
    lr2d: float = 5e-4
    lr3d: float = 1e-3


SCALES: dict[str, Scale] = {
    "tiny": Scale(2, 1, (40, 40, 12), (40, 40, 12), (32, 32), (32, 32, 8), "resnet18", 1, 1, 1, 2, 2, 2),
    "cpu": Scale(12, 6, (96, 96, 24), (96, 96, 32), (96, 96), (96, 96, 16), "resnet18", 5, 2, 4, 18, 8, 2),
    "gpu": Scale(64, 16, (256, 256, 48), (256, 256, 48), (256, 256), (192, 192, 32), "resnet50", 40, 5, 40, 200,
                 16, 4),
}

MCGCN = Arm("MC-GCN", "mc-gcn")
AHNET = Arm("AH-Net", "ahnet", transfer=True)
FOUR = (Arm("2D U-Net", "2d-unet"), Arm("3D U-Net", "3d-unet"), MCGCN, AHNET)


@dataclass(frozen=True)
class Experiment:
    title: str
    task: str | None  # None: the data decides (ablations)
    arms: tuple[Arm, ...]
    #: the paper's published rows (its data, its GPU): shown beside ours, never mixed with them
    paper: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


EXPERIMENTS: dict[str, Experiment] = {
    "table4": Experiment("Table 4: lesion detection FROC (TPR at FP per volume)", "det", FOUR, {
        "2D U-Net": {"0.01": 0.4238, "0.05": 0.4767, "0.1": 0.5181, "0.15": 0.5723, "0.2": 0.6166, "0.25": 0.6506},
        "3D U-Net": {"0.01": 0.2448, "0.05": 0.3877, "0.1": 0.4381, "0.15": 0.5592, "0.2": 0.5738, "0.25": 0.5733},
        "MC-GCN": {"0.01": 0.3385, "0.05": 0.6727, "0.1": 0.6727, "0.15": 0.6909, "0.2": 0.7018, "0.25": 0.7272},
        "AH-Net": {"0.01": 0.4931, "0.05": 0.6000, "0.1": 0.7272, "0.15": 0.7454, "0.2": 0.7818, "0.25": 0.7818},
    }),
    "table5": Experiment("Table 5 style: liver and lesion Dice global (DG) and per case (DPC)", "seg", FOUR, {
        "AH-Net": {"lesion DG": 0.834, "lesion DPC": 0.634, "liver DG": 0.970, "liver DPC": 0.963},
    }),
    "ablations": Experiment("Ablations of AH-Net", None, (
        replace(MCGCN, shown=False),
        AHNET,
        Arm("from scratch (no transfer)", "ahnet"),
        Arm("no focal loss", "ahnet", transfer=True, focal=False),
        Arm("no pyramid pooling", "ahnet", transfer=True, options={"pyramid_pools": []}),
        Arm("isotropic 3x3x3 decoder", "ahnet", transfer=True, options={"dense_layer": "isotropic"}),
    )),
}

FROC_COLUMNS = ("0.01", "0.05", "0.1", "0.15", "0.2", "0.25")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def _task_of(data: Path) -> str:
    return "det" if (data / "boxesTr.json").is_file() else "seg"


def _write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _machine(device: str) -> str:
    """What ``device`` ran on, in words (results name the hardware beside the numbers)."""
    import torch

    from .bench import machine

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return machine(torch.device(device))


def synthetic_data(task: str, out: Path, scale: Scale, seed: int, progress: bool) -> tuple[Path, Path]:
    """Training and held-out phantom sets in ``out/data`` and ``out/test`` (reused when present)."""
    from . import synth

    make = synth.make_seg_dataset if task == "seg" else synth.make_det_dataset
    shape = scale.seg_shape if task == "seg" else scale.det_shape
    folders = []
    for name, cases, case_seed in (("data", scale.train_cases, seed), ("test", scale.test_cases, seed + 1000)):
        folder = out / name
        saved = folder / "synth.json"
        if saved.is_file():
            meta = json.loads(saved.read_text())
            if meta.get("seed") == case_seed and len(meta.get("cases", {})) == cases and meta.get("shape") == list(shape):
                folders.append(folder)
                continue
        folders.append(make(folder, cases=cases, seed=case_seed, shape=shape, progress=progress, overwrite=True))
    return folders[0], folders[1]


def _seg_classes(data: Path) -> dict[str, tuple[int, ...]]:
    from .evaluation.segmentation import LITS_CLASSES, classes_from_labels

    labels = json.loads((data / "dataset.json").read_text())["labels"]
    return dict(LITS_CLASSES) if labels == {"background": 0, "liver": 1, "lesion": 2} else classes_from_labels(labels)


def evaluate_predictions(task: str, predictions: Path, test: Path) -> dict:
    """Dice (seg; LiTS classes where the labels are LiTS's) or FROC (det) of a prediction folder."""
    if task == "seg":
        from .evaluation.segmentation import evaluate_segmentation

        return evaluate_segmentation(predictions, test / "labelsTr", classes=_seg_classes(test), progress=False).to_dict()
    from .evaluation.detection import evaluate_detection

    return evaluate_detection(predictions / "detections.csv", test / "boxesTr.json")


def run_arms(task: str, arms: tuple[Arm, ...], scale: Scale, data: Path, test: Path, out: Path, *,
             device: str = "auto", seed: int = 0, workers: int = 2, progress: bool = True) -> dict[str, dict]:
    """Train, predict and evaluate every arm in order; finished arms (``result.json``) are reused."""
    from .inference import predict
    from .models.factory import model_from_meta
    from .training import TrainConfig, Trainer, transfer_checkpoint
    from .training.checkpoint import load_checkpoint

    source = next((a for a in arms if a.model == "mc-gcn"), None)
    if any(a.transfer for a in arms) and (source is None or arms.index(source) > min(
            i for i, a in enumerate(arms) if a.transfer)):
        raise ConfigError("an arm with transfer needs an MC-GCN arm before it (its encoder is transferred)")
    # Segmentation arms add a soft Dice term to the (focal) cross-entropy, as ``ahnet train``'s plans do:
    # with cross-entropy alone the small lesion class was never predicted (lesion Dice 0 in the demo).
    common = dict(data=str(data), backbone=scale.backbone, iters_per_epoch=scale.iters, device=device, seed=seed,
                  workers=workers, val_patches=4, dice_loss=task == "seg")
    results: dict[str, dict] = {}
    settings = {"scale": asdict(scale), "seed": seed, "dice_loss": task == "seg"}
    for arm in arms:
        folder = out / _slug(arm.name)
        done = folder / "result.json"
        if done.is_file():
            finished = json.loads(done.read_text())
            if finished.get("settings") == json.loads(json.dumps(settings)):
                results[arm.name] = finished
                continue
            # Trained with another scale or seed (or by a version that did not record them): redone,
            # never reported as this run's.
            print(f"{arm.name}: {folder} was trained with other settings; training it again", file=sys.stderr)
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.time()
        run = dict(common, out=str(folder / "train"), model=arm.model, focal=arm.focal,
                   options=dict(arm.options) or None)
        if arm.model in ("mc-gcn", "2d-unet"):
            config = TrainConfig(patch=(*scale.patch2d, 3), epochs=scale.epochs2d, batch_size=scale.batch2d,
                                 lr=scale.lr2d, **run)
        elif arm.transfer:
            init = transfer_checkpoint(out / _slug(source.name) / "train" / "checkpoint_best.pt", folder / "init.pt",
                                       options=dict(arm.options) or None)
            run["options"] = None  # the transferred checkpoint carries the structure
            config = TrainConfig(patch=scale.patch3d, init=str(init), stage1_epochs=scale.stage1_epochs,
                                 epochs=scale.epochs3d, batch_size=scale.batch3d, lr=scale.lr3d, **run)
        else:
            config = TrainConfig(patch=scale.patch3d, epochs=scale.stage1_epochs + scale.epochs3d,
                                 batch_size=scale.batch3d, lr=scale.lr3d, **run)
        trained = Trainer(config, progress=progress).fit()
        train_s = time.time() - start
        start = time.time()
        predict(folder / "train" / "checkpoint_best.pt", test / "imagesTr", folder / "predictions", device=device,
                progress=progress, threshold=0.05, top_k=10, overwrite=True)
        predict_s = time.time() - start
        meta = load_checkpoint(folder / "train" / "checkpoint_best.pt", kind="train")["model_meta"]
        params = sum(p.numel() for p in model_from_meta(meta).parameters())
        result = {"arm": asdict(arm) | {"options": dict(arm.options)}, "task": task,
                  "metrics": evaluate_predictions(task, folder / "predictions", test),
                  "best_validation": trained["best_metric"], "train_s": round(train_s, 1),
                  "predict_s": round(predict_s, 1), "parameters": params, "settings": settings}
        _write_json(done, result)
        results[arm.name] = result
    return results


def _row(task: str, metrics: Mapping[str, Any]) -> dict[str, float]:
    if task == "det":
        return {k: float(metrics["froc"].get(k, 0.0)) for k in FROC_COLUMNS}
    row = {}
    for cls in metrics["dice_global"]:
        row[f"{cls} DG"] = float(metrics["dice_global"][cls])
        row[f"{cls} DPC"] = float(metrics["dice_per_case"][cls])
    return row


def results_table(experiment: Experiment, task: str, results: Mapping[str, dict]) -> tuple[list[str], list[list]]:
    """Header and rows (``name``, metric values, training minutes) of the arms that are shown."""
    rows, columns = [], None
    for arm in experiment.arms:
        if not arm.shown or arm.name not in results:
            continue
        values = _row(task, results[arm.name]["metrics"])
        columns = columns or list(values)
        rows.append([arm.name, *[values.get(c, float("nan")) for c in columns], results[arm.name]["train_s"] / 60])
    return ["network", *(columns or []), "train min"], rows


def _markdown(header: list[str], rows: list[list], digits: int = 3) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row[0]] + [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(task: str, experiment: Experiment, results: Mapping[str, dict], test: Path, path: Path) -> None:
    shown = [a for a in experiment.arms if a.shown and a.name in results]
    if task == "det":
        from .evaluation.detection import FROCResult, plot_froc

        curves = [(a.name, FROCResult(**{k: results[a.name]["metrics"][k] for k in ("froc", "lesions", "volumes", "curve")}))
                  for a in shown]
        plot_froc(curves, path, title=experiment.title.split(":")[0] + ": FROC")
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    header, rows = results_table(experiment, task, results)
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    metrics = header[1:-1]
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        ax.bar([m + i * width for m in range(len(metrics))], row[1:-1], width, label=row[0])
    ax.set_xticks([m + 0.4 - width / 2 for m in range(len(metrics))], metrics)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    ax.set_title(experiment.title.split(":")[0])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def run_experiment(name: str, out: str | Path, *, data: str | Path | None = None, test: str | Path | None = None,
                   task: str | None = None, scale: str = "cpu", device: str = "auto", seed: int = 0,
                   workers: int = 2, progress: bool = True) -> dict:
    """Run experiment ``name`` into ``out``: results.json, results.md and a plot (FROC or Dice bars).

    Without ``data`` the built-in phantoms of ``task`` are generated at ``scale``; with ``data`` (a
    training data set) ``test`` must be a second data set with labels (seg) or boxes (det).
    """
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; choose one of {sorted(EXPERIMENTS)} (table3: ahnet bench)")
    if scale not in SCALES:
        raise ConfigError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    experiment, sizes, out = EXPERIMENTS[name], SCALES[scale], Path(out)
    if (data is None) != (test is None):
        raise ConfigError("give both --data (training set) and --test (held-out set with labels), or neither")
    if data is not None:
        data, test = Path(data), Path(test)
        for folder in (data, test):
            if not (folder / "dataset.json").is_file():
                raise DataError(f"{folder}: not a data set (no dataset.json)")
        found = _task_of(data)
        if _task_of(test) != found:
            raise DataError(f"{data} is a {found} data set but {test} is not")
        if experiment.task and found != experiment.task:
            raise ConfigError(f"{name} is a {experiment.task} experiment but {data} is a {found} data set")
        task = found
    else:
        if experiment.task and task and task != experiment.task:
            raise ConfigError(f"{name} is a {experiment.task} experiment, not {task}")
        task = experiment.task or task or "seg"
        if task not in ("seg", "det"):
            raise ConfigError(f"task must be seg or det, got {task!r}")
        out.mkdir(parents=True, exist_ok=True)
        data, test = synthetic_data(task, out, sizes, seed, progress)
    start = time.time()
    results = run_arms(task, experiment.arms, sizes, data, test, out, device=device, seed=seed, workers=workers,
                       progress=progress)
    header, rows = results_table(experiment, task, results)
    plot = out / ("froc.png" if task == "det" else "dice.png")
    _plot(task, experiment, results, test, plot)
    summary = {"experiment": name, "title": experiment.title, "task": task, "scale": scale, "sizes": asdict(sizes),
               "data": str(data), "test": str(test), "device": device, "machine": _machine(device), "seed": seed,
               "seconds": round(time.time() - start, 1), "header": header, "rows": rows,
               "paper": {k: dict(v) for k, v in experiment.paper.items()}, "arms": results, "plot": str(plot)}
    _write_json(out / "results.json", summary)
    text = [f"# {experiment.title}", "",
            f"Ours: scale `{scale}` ({sizes.backbone}, {sizes.train_cases} training / {sizes.test_cases} test "
            f"cases), data `{data}`, device `{device}` ({summary['machine']}), seed {seed}.", "",
            _markdown(header, rows), ""]
    if experiment.paper:
        paper_header = ["network (paper, its data, GPU)", *next(iter(experiment.paper.values())).keys()]
        paper_rows = [[k, *v.values()] for k, v in experiment.paper.items()]
        text += ["The paper's published numbers (not comparable in value: other data, full training):", "",
                 _markdown(paper_header, paper_rows, digits=4), ""]
    text.append(f"![plot]({plot.name})")
    (out / "results.md").write_text("\n".join(text) + "\n")
    return summary
