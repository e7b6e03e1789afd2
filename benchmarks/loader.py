"""Patch loader throughput at 100+ cases: the preprocessed store against preparing cases from raw files.

Issue 13's target: the loader keeps up with the training step (at least 10x its demand of
``batch / step_s`` patches a second) on a 100-case data set, with bounded memory. Rows:

- ``store``: cases written once by ``ahnet preprocess`` and memory-mapped (what ``ahnet train`` reads);
- ``raw``: every case read from its ``.nii.gz`` and prepared when drawn, 8 cases kept per worker
  (``train3d`` without ``--preprocessed``; the path before the store existed).

Both draw the same patches (70 % positive, augmented) through a DataLoader with the training's
workers. Memory is the private (anonymous) resident memory of the main process and its workers
together, sampled as the run goes: "flat" means it stops growing once every worker has run a while
(mapped case files are the system's page cache and are reported apart, as ``file_mb``).

    python benchmarks/loader.py --cases 100 --shape 256x256x48 --patch 96x96x32 --batches 300 --step-s 0.80

``--step-s`` is the training step to compare with (default 0.80 s: AH-Net, ResNet-18, 96x96x32, batch 2 on
2 AVX-512 cores, docs/performance.md). Name the CPU's flags beside the figures:
``grep -o 'avx512[a-z_0-9]*' /proc/cpuinfo | sort -u``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def _size(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.lower().split("x"))


def _tree_memory_mb(pid: int) -> tuple[float, float]:
    """Anonymous and file-backed resident memory (MB) of ``pid`` and all its descendants."""
    anon = file = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        anon += int(line.split()[1])
                    elif line.startswith("RssFile:"):
                        file += int(line.split()[1])
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return anon / 1024, file / 1024


def measure(row: str, info, store: Path, preprocessing, patch, batch: int, batches: int, workers: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from ahnet.data.preprocessing import CaseLoader
    from ahnet.data.sampling import EpochSampler, PatchDataset
    from ahnet.data.store import StoredCaseLoader

    if row == "store":
        load, cache = StoredCaseLoader(store), len(info.cases)
    else:
        load, cache = CaseLoader(info, preprocessing, 0), 8
    samples = batches * batch
    data = PatchDataset(info.cases, load, patch, samples, seed=0, positive_ratio=0.7, mode="3d", augment=True,
                        cache_size=cache)
    loader = DataLoader(data, batch_size=batch, sampler=EpochSampler(samples), num_workers=workers,
                        drop_last=True, persistent_workers=False)
    memory, seen, start = [], 0, time.perf_counter()
    first = None
    for i, item in enumerate(loader):
        assert item["image"].shape[0] == batch and torch.isfinite(item["image"]).all()
        seen += batch
        if first is None:
            first = time.perf_counter() - start
        if (i + 1) % max(1, batches // 10) == 0:
            anon, file = _tree_memory_mb(os.getpid())
            memory.append({"batches": i + 1, "anon_mb": round(anon), "file_mb": round(file)})
    seconds = time.perf_counter() - start
    # the steady rate, after the workers' start-up (the first batch, reported apart)
    return {"row": row, "patches": seen, "seconds": round(seconds, 2), "first_batch_s": round(first, 2),
            "patches_per_s": round((seen - batch) / (seconds - first), 2), "memory": memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--shape", type=_size, default=(256, 256, 48), help="synthetic case size XxYxZ")
    parser.add_argument("--patch", type=_size, default=(96, 96, 32))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--batches", type=int, default=300, help="batches drawn per row")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--step-s", type=float, default=0.80, help="seconds of the training step compared with")
    parser.add_argument("--rows", default="store,raw")
    parser.add_argument("--work", help="folder for the data set and its store (default: a temporary one)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    from ahnet.data.dataset import load_dataset
    from ahnet.data.store import fingerprint_dataset, preprocess_dataset
    from ahnet.planning import make_plan, plan_preprocessing
    from ahnet.synth import make_seg_dataset

    work = Path(args.work or tempfile.mkdtemp(prefix="ahnet-loader-"))
    data = work / "data"
    start = time.perf_counter()
    if not (data / "dataset.json").is_file():
        make_seg_dataset(data, cases=args.cases, shape=args.shape, progress=True)
    synth_s = time.perf_counter() - start
    info = load_dataset(data)
    fingerprint = fingerprint_dataset(info, work / "fingerprint.json", workers=args.workers, progress=True)
    preprocessing = plan_preprocessing(make_plan(fingerprint))
    start = time.perf_counter()
    report = preprocess_dataset(info, preprocessing, work / "store", workers=args.workers, progress=True)
    preprocess_s = time.perf_counter() - start
    demand = args.batch / args.step_s
    result = {"cases": len(info.cases), "shape": list(args.shape), "patch": list(args.patch), "batch": args.batch,
              "workers": args.workers, "step_s": args.step_s, "demand_patches_per_s": round(demand, 2),
              "synth_s": round(synth_s, 1), "preprocess_s": round(preprocess_s, 1), "rows": []}
    print(f"{len(info.cases)} cases of {'x'.join(map(str, args.shape))}: preprocessed in {preprocess_s:.1f} s; "
          f"the step's demand: {demand:.2f} patches/s")
    for row in args.rows.split(","):
        r = measure(row, info, report.root, preprocessing, args.patch, args.batch, args.batches, args.workers)
        r["x_demand"] = round(r["patches_per_s"] / demand, 1)
        result["rows"].append(r)
        mem = ", ".join(str(m["anon_mb"]) for m in r["memory"])
        print(f"{row:>6}: {r['patches_per_s']:8.2f} patches/s = {r['x_demand']:6.1f}x the demand; first batch "
              f"{r['first_batch_s']} s; private memory (MB) along the run: {mem}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
