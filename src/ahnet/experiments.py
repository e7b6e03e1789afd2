"""The paper's comparisons, rerunnable on the built-in phantoms or on any data set (§4, Tables 3-5).

An experiment is data: a task and a list of :class:`Arm` s, each a network trained and evaluated
the same way (same data, patches, iterations and evaluation) so that rows are comparable:

- ``table4``: FROC of 2D U-Net, 3D U-Net, MC-GCN and AH-Net on the DBT-like task (Table 4, Fig. 6);
- ``table5``: Dice global / per case of liver and lesion for the same four on the CT-like task
  (Table 5 style; the paper lists only AH-Net against challenge entries);
- ``ablations``: AH-Net as in the paper against AH-Net trained from scratch, without focal loss,
  without pyramid pooling, and with an isotropic 3x3x3 decoder;
- ``table3`` (timing) is :func:`ahnet.bench.run_bench`.

Every arm is trained with ``--seeds N`` training seeds on the same data (``out/seed-<s>/<arm>/``), so
that each number of the table is a mean with a 95 % interval by bootstrap over the test cases and
the seeds (:mod:`ahnet.evaluation.bootstrap`), and each of the paper's orderings (an
:attr:`Experiment.orderings` entry) is tested by the paired bootstrap of the two rows' difference.

Each arm writes ``result.json`` (with the per-case material the bootstrap needs) into its own folder
when done; rerunning the same command skips the finished arms, so a crash costs at most the arm in
progress (an arm finished with another scale, data or training seed is trained again, never reported
as this run's). ``results.md`` and ``results.json`` hold the table, beside the paper's numbers, which
come from a GPU and the paper's data, never ours.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import ConfigError, DataError
from .evaluation.bootstrap import (LEVEL, RESAMPLES, Bootstrap, Estimate, Interval, Metric, dice_global, froc_tpr,
                                   mean_per_case, verdict)
from .fileio import atomic_write_text
from .tasks import dataset_task, task_for


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
    """Data and training sizes. ``cpu`` runs anywhere in minutes per arm; ``gpu`` is closer to §4.

    ``seeds``: training seeds per arm when ``--seeds`` is not given (the rows' intervals need more than
    one to show training variation; ``tiny``, a smoke test, trains one).
    """

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
    seeds: int = 3
    #: :attr:`ahnet.training.TrainConfig.lr_schedule` of every arm. ``constant``: with the poly decay the
    #: shortest runs learned less (tests/test_demo.py's 30-step scale: MC-GCN liver Dice 0.28 instead of
    #: above 0.48), and at the ``cpu`` scale it gained nothing measurable (experiments/RESULTS.md)
    lr_schedule: str = "constant"


SCALES: dict[str, Scale] = {
    "tiny": Scale(2, 1, (40, 40, 12), (40, 40, 12), (32, 32), (32, 32, 8), "resnet18", 1, 1, 1, 2, 2, 2, seeds=1),
    "cpu": Scale(12, 24, (96, 96, 24), (96, 96, 32), (96, 96), (96, 96, 16), "resnet18", 5, 2, 8, 18, 8, 2),
    "gpu": Scale(64, 16, (256, 256, 48), (256, 256, 48), (256, 256), (192, 192, 32), "resnet50", 40, 5, 40, 200,
                 16, 4),
}

MCGCN = Arm("MC-GCN", "mc-gcn")
AHNET = Arm("AH-Net", "ahnet", transfer=True)
FOUR = (Arm("2D U-Net", "2d-unet"), Arm("3D U-Net", "3d-unet"), MCGCN, AHNET)


#: The paper's lesion metric: Dice global on the CT-like task (Table 5), TPR at 0.25 FP per volume on the
#: DBT-like one (Table 4's last column). An ordering is tested on the first of these columns the table has.
LESION = ("lesion DG", "0.25")


@dataclass(frozen=True)
class Experiment:
    title: str
    task: str | None  # None: the data decides (ablations)
    arms: tuple[Arm, ...]
    #: the paper's published rows (its data, its GPU): shown beside ours, never mixed with them
    paper: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    #: the paper's claims to test: (better row, worse row, columns to test it on, the first the table has)
    orderings: tuple[tuple[str, str, tuple[str, ...]], ...] = ()


#: §4: AH-Net above MC-GCN above the 3D U-Net on lesions (Tables 4 and 5).
PAPER_ORDER = (("AH-Net", "MC-GCN", LESION), ("MC-GCN", "3D U-Net", LESION))


EXPERIMENTS: dict[str, Experiment] = {
    "table4": Experiment("Table 4: lesion detection FROC (TPR at FP per volume)", "det", FOUR, {
        "2D U-Net": {"0.01": 0.4238, "0.05": 0.4767, "0.1": 0.5181, "0.15": 0.5723, "0.2": 0.6166, "0.25": 0.6506},
        "3D U-Net": {"0.01": 0.2448, "0.05": 0.3877, "0.1": 0.4381, "0.15": 0.5592, "0.2": 0.5738, "0.25": 0.5733},
        "MC-GCN": {"0.01": 0.3385, "0.05": 0.6727, "0.1": 0.6727, "0.15": 0.6909, "0.2": 0.7018, "0.25": 0.7272},
        "AH-Net": {"0.01": 0.4931, "0.05": 0.6000, "0.1": 0.7272, "0.15": 0.7454, "0.2": 0.7818, "0.25": 0.7818},
    }, PAPER_ORDER),
    "table5": Experiment("Table 5 style: liver and lesion Dice global (DG) and per case (DPC)", "seg", FOUR, {
        "AH-Net": {"lesion DG": 0.834, "lesion DPC": 0.634, "liver DG": 0.970, "liver DPC": 0.963},
    }, PAPER_ORDER),
    "ablations": Experiment("Ablations of AH-Net", None, (
        replace(MCGCN, shown=False),
        AHNET,
        Arm("from scratch (no transfer)", "ahnet"),
        Arm("no focal loss", "ahnet", transfer=True, focal=False),
        Arm("no pyramid pooling", "ahnet", transfer=True, options={"pyramid_pools": []}),
        Arm("isotropic 3x3x3 decoder", "ahnet", transfer=True, options={"dense_layer": "isotropic"}),
    ), orderings=(("AH-Net", "from scratch (no transfer)", LESION), ("AH-Net", "no focal loss", LESION))),
}

FROC_COLUMNS = ("0.01", "0.05", "0.1", "0.15", "0.2", "0.25")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


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
    spec = task_for(task)
    shape = spec.phantom_shape(scale)
    folders = []
    for name, cases, case_seed in (("data", scale.train_cases, seed), ("test", scale.test_cases, seed + 1000)):
        folder = out / name
        saved = folder / "synth.json"
        if saved.is_file():
            meta = json.loads(saved.read_text())
            if meta.get("seed") == case_seed and len(meta.get("cases", {})) == cases and meta.get("shape") == list(shape):
                folders.append(folder)
                continue
        folders.append(spec.make_phantoms(folder, cases=cases, seed=case_seed, shape=shape, progress=progress,
                                          overwrite=True))
    return folders[0], folders[1]


def run_arms(task: str, arms: tuple[Arm, ...], scale: Scale, data: Path, test: Path, out: Path, *,
             device: str = "auto", seed: int = 0, workers: int = 2, progress: bool = True,
             data_seed: int | None = None) -> dict[str, dict]:
    """Train, predict and evaluate every arm in order; finished arms (``result.json``) are reused.

    ``seed`` seeds the training; ``data_seed`` (default: ``seed``) is the seed the phantoms were made
    with, recorded so that an arm trained on other data is never reused for this one.
    """
    from .inference import predict
    from .models.factory import model_from_meta
    from .training import TrainConfig, Trainer, transfer_checkpoint
    from .training.checkpoint import load_checkpoint

    source = next((a for a in arms if a.model == "mc-gcn"), None)
    if any(a.transfer for a in arms) and (source is None or arms.index(source) > min(
            i for i, a in enumerate(arms) if a.transfer)):
        raise ConfigError("an arm with transfer needs an MC-GCN arm before it (its encoder is transferred)")
    # The task's loss terms, as ``ahnet train``'s plans use them (segmentation: Dice + CE).
    spec = task_for(task)
    common = dict(data=str(data), backbone=scale.backbone, iters_per_epoch=scale.iters, device=device, seed=seed,
                  workers=workers, val_patches=4, dice_loss=spec.dice_loss, lr_schedule=scale.lr_schedule)
    results: dict[str, dict] = {}
    settings = {"scale": asdict(scale), "seed": seed, "data_seed": seed if data_seed is None else data_seed,
                "dice_loss": spec.dice_loss}
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
                progress=progress, threshold=None, top_k=10, overwrite=True)  # the FROC ranks every maximum
        predict_s = time.time() - start
        meta = load_checkpoint(folder / "train" / "checkpoint_best.pt", kind="train")["model_meta"]
        params = sum(p.numel() for p in model_from_meta(meta).parameters())
        result = {"arm": asdict(arm) | {"options": dict(arm.options)}, "task": task,
                  "metrics": spec.evaluate(folder / "predictions", test),
                  "best_validation": trained["best_metric"], "train_s": round(train_s, 1),
                  "predict_s": round(predict_s, 1), "parameters": params, "settings": settings}
        _write_json(done, result)
        results[arm.name] = result
    return results


@dataclass(frozen=True)
class Column:
    """One metric of the table: its name in words, and how to recompute it on resampled cases."""

    label: str
    metric: Metric
    material: Callable[[Mapping[str, Any], list[str]], Any]  # (an arm's metrics, case order) -> per-case material


def froc_columns() -> dict[str, Column]:
    """TPR at Table 4's FP rates (detection)."""
    return {k: Column(f"TPR at {k} FP per volume", partial(froc_tpr, rate=float(k)), _findings) for k in FROC_COLUMNS}


def dice_columns(metrics: Mapping[str, Any]) -> dict[str, Column]:
    """Dice global and per case of each class (segmentation, Table 5)."""
    columns = {}
    for cls in metrics["dice_global"]:
        columns[f"{cls} DG"] = Column(f"{cls} Dice global", dice_global, partial(_counts, cls=cls))
        columns[f"{cls} DPC"] = Column(f"{cls} Dice per case", mean_per_case, partial(_case_dice, cls=cls))
    return columns


def _findings(metrics: Mapping[str, Any], cases: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    found = [metrics["cases"][c] for c in cases]
    return [(np.asarray(f["fp"], dtype=np.float64),
             np.array([-np.inf if s is None else s for s in f["lesions"]], dtype=np.float64)) for f in found]


def _counts(metrics: Mapping[str, Any], cases: list[str], cls: str) -> np.ndarray:
    return np.array([[metrics["counts"][c][cls][k] for k in ("tp", "fp", "fn")] for c in cases], dtype=np.float64)


def _case_dice(metrics: Mapping[str, Any], cases: list[str], cls: str) -> np.ndarray:
    return np.array([metrics["cases"][c][cls] for c in cases], dtype=np.float64)


@dataclass(frozen=True)
class OrderingTest:
    """One of the paper's orderings ("better > worse") tested on our rows; ``difference`` is the paired
    bootstrap of better - worse, ``None`` when the table lacks the rows or the column."""

    better: str
    worse: str
    metric: str
    better_interval: Interval | None = None
    worse_interval: Interval | None = None
    difference: Interval | None = None

    @property
    def verdict(self) -> str:
        return "not tested" if self.difference is None else verdict(self.difference)

    @property
    def overlap(self) -> bool | None:
        return None if self.difference is None else self.better_interval.overlaps(self.worse_interval)

    def line(self) -> str:
        """``AH-Net > MC-GCN on lesion Dice global: 0.410 [0.300, 0.520] vs 0.350 [...], intervals overlap;
        paired difference +0.060 [-0.030, 0.150]: not shown``."""
        if self.difference is None:
            return f"{self.better} > {self.worse}: not tested (this table has no {self.metric})"
        return (f"{self.better} > {self.worse} on {self.metric}: {self.better_interval.format()} vs "
                f"{self.worse_interval.format()}, intervals {'overlap' if self.overlap else 'apart'}; "
                f"paired difference {self.difference.format(sign=True)}: {self.verdict}")

    def to_dict(self) -> dict:
        intervals = {k: getattr(self, k) for k in ("better_interval", "worse_interval", "difference")}
        return {"better": self.better, "worse": self.worse, "metric": self.metric, "verdict": self.verdict,
                "overlap": self.overlap, "line": self.line(),
                **{k: v.to_dict() if v else None for k, v in intervals.items()}}


@dataclass(frozen=True)
class Comparison:
    """The table (an :class:`Interval` per cell) and the orderings tested, from ``seeds`` runs of ``cases``."""

    header: list[str]
    rows: list[list]  # name, an Interval per metric, mean training minutes
    orderings: list[OrderingTest]
    seeds: int
    cases: int
    resamples: int

    def to_dict(self) -> dict:
        """``rows`` hold the means (as before intervals); ``intervals`` the same cells with their intervals."""
        metrics = self.header[1:-1]
        return {"header": self.header,
                "rows": [[row[0], *(c.mean for c in row[1:-1]), row[-1]] for row in self.rows],
                "intervals": {row[0]: {m: c.to_dict() for m, c in zip(metrics, row[1:-1])} for row in self.rows},
                "orderings": [o.to_dict() for o in self.orderings],
                "bootstrap": {"seeds": self.seeds, "cases": self.cases, "resamples": self.resamples, "level": LEVEL}}


def compare(experiment: Experiment, task: str, runs: Sequence[Mapping[str, dict]],
            resamples: int = RESAMPLES) -> Comparison:
    """Table and orderings of finished runs, one mapping ``arm name -> result.json`` per training seed.

    Works from saved results alone (``results.json``'s ``arms`` values): every cell is recomputed
    from the per-case material on each resample of seeds and cases, one draw for all rows (paired).
    """
    shown = [a.name for a in experiment.arms if a.shown and all(a.name in run for run in runs)]
    if not runs or not shown:
        raise DataError(f"{experiment.title}: no finished arm to report")
    first = runs[0][shown[0]]["metrics"]
    columns, cases = task_for(task).columns(first), sorted(first["cases"])
    for k, run in enumerate(runs):
        for name in shown:
            if sorted(run[name]["metrics"]["cases"]) != cases:
                raise DataError(f"{name} (run {k}) was scored on other test cases than {shown[0]} (run 0): "
                                "rows are compared on the same cases only")
    boot = Bootstrap(len(runs), len(cases), resamples)
    estimates: dict[str, dict[str, Estimate]] = {
        name: {col: boot.estimate(c.metric, [c.material(run[name]["metrics"], cases) for run in runs])
               for col, c in columns.items()} for name in shown}
    rows = [[name, *(estimates[name][col].interval for col in columns),
             float(np.mean([run[name]["train_s"] for run in runs])) / 60] for name in shown]
    orderings = []
    for better, worse, wanted in experiment.orderings:
        col = next((c for c in wanted if c in columns), None)
        if col is None or better not in estimates or worse not in estimates:
            missing = [n for n in (better, worse) if n not in estimates]
            orderings.append(OrderingTest(better, worse, f"row {' or '.join(missing)}" if missing else
                                          f"column {' or '.join(wanted)}"))
            continue
        b, w = estimates[better][col], estimates[worse][col]
        orderings.append(OrderingTest(better, worse, columns[col].label, b.interval, w.interval,
                                      boot.difference(b, w)))
    return Comparison(["network", *columns, "train min"], rows, orderings, len(runs), len(cases), resamples)


def _markdown(header: list[str], rows: list[list], digits: int = 3) -> str:
    def cell(v) -> str:
        if isinstance(v, Interval):
            return v.format(digits)
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([row[0], *map(cell, row[1:])]) + " |" for row in rows]
    return "\n".join(lines)


def _intervals_note(bootstrap: Mapping[str, int]) -> str:
    """How to read the cells (``Comparison.to_dict()["bootstrap"]``), for results.md and the printed summary."""
    return (f"Each cell: mean over {bootstrap['seeds']} training seed(s) [95 % interval by bootstrap over the "
            f"{bootstrap['cases']} test case(s) and the seeds, {bootstrap['resamples']} resamples]. Two rows whose "
            "intervals overlap are not shown apart by them; the paired difference of the orderings is the test.")


#: What the orderings' verdicts mean (results.md and the printed summary).
VERDICTS = ('"holds": the 95 % interval of the paired difference (better - worse, same cases and seeds) is '
            'above 0; "does not hold": below 0 (the reverse is shown); "not shown": it holds 0.')


def _mean_curve(curves: Sequence[Sequence[Sequence[float]]]) -> list[list[float]]:
    """Mean over seeds of FROC step curves (the TPR reached at each FP rate), on all their FP rates."""
    grid = np.unique(np.concatenate([[p[0] for p in c] for c in curves]))
    values = []
    for c in curves:
        fp, tpr = np.array([p[0] for p in c]), np.maximum.accumulate([p[1] for p in c])
        values.append(tpr[np.searchsorted(fp, grid, side="right") - 1])
    return [[float(x), float(y)] for x, y in zip(grid, np.mean(values, axis=0))]


def plot_froc_rows(comparison: Comparison, runs: Sequence[Mapping[str, dict]], path: Path, title: str) -> None:
    """FROC curves of the rows (mean over seeds) with interval bars at the table's rates."""
    from .evaluation.detection import FROCResult, plot_froc

    metrics = comparison.header[1:-1]
    curves, bars = [], {}
    for row in comparison.rows:
        first = runs[0][row[0]]["metrics"]
        mean = {m: c.mean for m, c in zip(metrics, row[1:-1])}
        curve = _mean_curve([run[row[0]]["metrics"]["curve"] for run in runs])
        curves.append((row[0], FROCResult(mean, first["lesions"], first["volumes"], curve)))
        bars[row[0]] = {m: (c.low, c.high) for m, c in zip(metrics, row[1:-1])}
    plot_froc(curves, path, title=f"{title}: FROC (mean of {comparison.seeds} seed(s), 95 % intervals)",
              intervals=bars)


def plot_dice_rows(comparison: Comparison, path: Path, title: str) -> None:
    """Dice bars of the rows with interval bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = comparison.header[1:-1]
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(comparison.rows))
    for i, row in enumerate(comparison.rows):
        cells = row[1:-1]
        errors = [[c.mean - c.low for c in cells], [c.high - c.mean for c in cells]]
        ax.bar([m + i * width for m in range(len(metrics))], [c.mean for c in cells], width, label=row[0],
               yerr=np.clip(errors, 0, None), capsize=2, error_kw={"elinewidth": 0.8})
    ax.set_xticks([m + 0.4 - width / 2 for m in range(len(metrics))], metrics)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"Dice (mean of {comparison.seeds} seed(s), 95 % interval)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def summary_text(summary: Mapping[str, Any]) -> str:
    """The printed summary of :func:`run_experiment`: the table with intervals, then the orderings."""
    header, intervals = summary["header"], summary["intervals"]
    lines = [f"{summary['title']} ({summary['task']}, scale {summary['scale']}, {summary['seconds'] / 60:.1f} min)",
             "  ".join(f"{h:>22}" if i else f"{h:<28}" for i, h in enumerate(header))]
    for row in summary["rows"]:
        cells = [Interval(**intervals[row[0]][m]).format() for m in header[1:-1]]
        lines.append("  ".join([f"{row[0]:<28}", *(f"{c:>22}" for c in cells), f"{row[-1]:>22.1f}"]))
    lines += ["", _intervals_note(summary["bootstrap"])]
    if summary["orderings"]:
        lines += ["", "Orderings of the paper:", *(f"  {o['line']}" for o in summary["orderings"]), VERDICTS]
    return "\n".join(lines)


def run_experiment(name: str, out: str | Path, *, data: str | Path | None = None, test: str | Path | None = None,
                   task: str | None = None, scale: str = "cpu", device: str = "auto", seed: int = 0,
                   seeds: int | None = None, workers: int = 2, progress: bool = True) -> dict:
    """Run experiment ``name`` into ``out``: results.json, results.md and a plot (FROC or Dice bars).

    Without ``data`` the built-in phantoms of ``task`` are generated at ``scale`` (with ``seed``); with
    ``data`` (a training data set) ``test`` must be a second data set with labels (seg) or boxes (det).
    Every arm is trained ``seeds`` times (default: the scale's), with training seeds ``seed``,
    ``seed + 1``, ... into ``out/seed-<s>/``; the table gives means with 95 % intervals.
    """
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; choose one of {sorted(EXPERIMENTS)} (table3: ahnet bench)")
    if scale not in SCALES:
        raise ConfigError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    experiment, sizes, out = EXPERIMENTS[name], SCALES[scale], Path(out)
    seeds = sizes.seeds if seeds is None else seeds
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"--seeds must be a whole number >= 1 (trainings of each network), got {seeds!r}")
    if (data is None) != (test is None):
        raise ConfigError("give both --data (training set) and --test (held-out set with labels), or neither")
    if data is not None:
        data, test = Path(data), Path(test)
        for folder in (data, test):
            if not (folder / "dataset.json").is_file():
                raise DataError(f"{folder}: not a data set (no dataset.json)")
        found = dataset_task(data).name
        if dataset_task(test).name != found:
            raise DataError(f"{data} is a {found} data set but {test} is not")
        if experiment.task and found != experiment.task:
            raise ConfigError(f"{name} is a {experiment.task} experiment but {data} is a {found} data set")
        task = found
    else:
        if experiment.task and task and task != experiment.task:
            raise ConfigError(f"{name} is a {experiment.task} experiment, not {task}")
        task = task_for(experiment.task or task or "seg").name
        out.mkdir(parents=True, exist_ok=True)
        data, test = synthetic_data(task, out, sizes, seed, progress)
    start = time.time()
    # The data stay those of ``seed``; only the training seed varies, so rows are paired on the same cases.
    runs = {f"seed-{s}": run_arms(task, experiment.arms, sizes, data, test, out / f"seed-{s}", device=device, seed=s,
                                  data_seed=seed, workers=workers, progress=progress)
            for s in range(seed, seed + seeds)}
    comparison = compare(experiment, task, list(runs.values()))
    plot = out / task_for(task).plot_name
    task_for(task).plot(comparison, list(runs.values()), plot, experiment.title.split(":")[0])
    summary = {"experiment": name, "title": experiment.title, "task": task, "scale": scale, "sizes": asdict(sizes),
               "data": str(data), "test": str(test), "device": device, "machine": _machine(device), "seed": seed,
               "seeds": list(range(seed, seed + seeds)), "seconds": round(time.time() - start, 1),
               **comparison.to_dict(), "paper": {k: dict(v) for k, v in experiment.paper.items()}, "arms": runs,
               "plot": str(plot)}
    _write_json(out / "results.json", summary)
    text = [f"# {experiment.title}", "",
            f"Ours: scale `{scale}` ({sizes.backbone}, {sizes.train_cases} training / {sizes.test_cases} test "
            f"cases), data `{data}`, device `{device}` ({summary['machine']}), data seed {seed}, training seeds "
            f"{', '.join(map(str, summary['seeds']))} (`seed-<s>/`).", "",
            _markdown(comparison.header, comparison.rows), "", _intervals_note(summary["bootstrap"]), ""]
    if comparison.orderings:
        text += ["## Orderings of the paper", "", *(f"- {o.line()}" for o in comparison.orderings), "", VERDICTS, ""]
    if experiment.paper:
        paper_header = ["network (paper, its data, GPU)", *next(iter(experiment.paper.values())).keys()]
        paper_rows = [[k, *v.values()] for k, v in experiment.paper.items()]
        text += ["The paper's published numbers (not comparable in value: other data, full training):", "",
                 _markdown(paper_header, paper_rows, digits=4), ""]
    text.append(f"![plot]({plot.name})")
    (out / "results.md").write_text("\n".join(text) + "\n")
    return summary
