"""``ahnet demo``: the whole method on built-in synthetic data, on any machine.

For each task (CT-like segmentation, DBT-like detection): generate a training set and a held-out
test set (:mod:`ahnet.synth`), train MC-GCN on 3-slice stacks, transfer its encoder (Eq. 1-3),
train AH-Net in two stages (decoder with the encoder frozen, then jointly, §3.4), predict the
held-out volumes with both, evaluate them (Dice or FROC) and write the HTML report of AH-Net.
Beside the networks' numbers the demo prints a trivial baseline (every body voxel called liver;
random detections), so that learning is visible. The ``cpu`` scale takes about 8 minutes
on a 2-core CPU; on a GPU it uses the GPU (``device="auto"``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from .errors import ConfigError
from .experiments import AHNET, MCGCN, SCALES, Scale, run_arms, synthetic_data
from .tasks import TASKS, task_for


def run_task(task: str, out: Path, scale: Scale, device: str = "auto", seed: int = 0, workers: int = 2,
             progress: bool = True) -> dict:
    """Data, MC-GCN, transfer, two-stage AH-Net, prediction, evaluation and report for one task."""
    spec = task_for(task)
    train_data, test_data = synthetic_data(task, out, scale, seed, progress)
    results = run_arms(task, (MCGCN, AHNET), scale, train_data, test_data, out, device=device, seed=seed,
                       workers=workers, progress=progress)
    baseline_name, baseline = spec.baseline(test_data, seed)
    report = spec.report(out / "ah-net" / "predictions", test_data, out / "report.html",
                         title=f"ahnet demo: {spec.phantoms} (AH-Net)")
    rows = {name: spec.headline(r["metrics"]) for name, r in results.items()}
    rows[baseline_name] = spec.headline(baseline)
    return {"task": task, "report": str(report), "headline": rows, "baseline": baseline,
            "held_out": spec.held_out(baseline),
            "arms": {name: {k: r[k] for k in ("metrics", "train_s", "predict_s", "parameters")}
                     for name, r in results.items()}}


def run_demo(out: str | Path = "ahnet-demo", task: str = "both", scale: str | Scale = "cpu", device: str = "auto",
             seed: int = 0, workers: int = 2, progress: bool = True) -> dict:
    """Run the demo for ``task`` (``seg``, ``det`` or ``both``) into ``out``; returns a summary and
    writes it to ``out/summary.json``. ``scale`` is a name in :data:`SCALES` or a :class:`Scale`.
    Rerunning reuses the data and networks already finished."""
    if task not in (*TASKS, "both"):
        raise ConfigError(f"task must be {', '.join(TASKS)} or both, got {task!r}")
    if not isinstance(scale, Scale) and scale not in SCALES:
        raise ConfigError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    sizes = scale if isinstance(scale, Scale) else SCALES[scale]
    out = Path(out)
    start = time.time()
    results = {}
    for name in (tuple(TASKS) if task == "both" else (task,)):
        results[name] = run_task(name, out / name, sizes, device, seed, workers, progress)
    summary = {"seconds": round(time.time() - start, 1), "scale": scale if isinstance(scale, str) else asdict(scale),
               "tasks": results}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
