"""MC-GCN training steps: the GCN's strip convolutions against the plain ``nn.Conv2d`` they replace.

The plain convolution's oneDNN weight gradient breaks on AVX-512 CPUs for small maps
(docs/troubleshooting.md), so each measurement runs in its own process: a crash or hang there is
reported as such instead of ending the benchmark. Rows (``--variants``):

- ``strip``: ahnet's MC-GCN as shipped (explicit padding, taps that only meet padding dropped);
- ``plain``: the same network with ``nn.Conv2d``'s own forward in the GCN branches (the old code);
- ``plain-no-onednn``: the old code with ``torch.backends.mkldnn.enabled = False``;
- ``plain-avx2``: the old code with ``ONEDNN_MAX_CPU_ISA=AVX2`` in the environment.

    python benchmarks/gcn_training_step.py --patches 32,64,96,256 --backbone resnet18 --batch 8

Prints one line per row and patch: median seconds of a forward + backward (after a warm-up step).
Name the CPU's flags beside the figures: ``grep -o 'avx512[a-z_0-9]*' /proc/cpuinfo | sort -u``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

VARIANTS = ("strip", "plain", "plain-no-onednn", "plain-avx2")

CHILD = r"""
import json, statistics, sys, time, types
import torch
from ahnet.models import MCGCN
from ahnet.models.mcgcn import StripConv2d

variant, backbone, preset, patch, batch, repeats, threads = sys.argv[1:8]
patch, batch, repeats = int(patch), int(batch), int(repeats)
torch.set_num_threads(int(threads))
torch.manual_seed(0)
model = MCGCN(2, backbone, preset=preset).train()
if variant != "strip":
    for m in model.modules():
        if isinstance(m, StripConv2d):
            m.forward = types.MethodType(torch.nn.Conv2d.forward, m)
if variant == "plain-no-onednn":
    torch.backends.mkldnn.enabled = False
x = torch.randn(batch, 3, patch, patch)
times = []
for i in range(repeats + 1):
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    model(x).square().mean().backward()
    times.append(time.perf_counter() - start)
print(json.dumps({"median_s": statistics.median(times[1:]), "min_s": min(times[1:])}))
"""


def measure(variant: str, backbone: str, preset: str, patch: int, batch: int, repeats: int, threads: int,
            timeout_s: float) -> dict:
    env = dict(os.environ)
    if variant == "plain-avx2":
        env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    cmd = [sys.executable, "-c", CHILD, variant, backbone, preset, str(patch), str(batch), str(repeats), str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"hang (> {timeout_s:.0f} s)"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"status": f"crash (exit {proc.returncode}: {last[:60]})"}
    return {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patches", default="32,64,96,256", help="2D patch sizes (default: %(default)s)")
    parser.add_argument("--backbone", default="resnet18", help="default: %(default)s")
    parser.add_argument("--preset", default="paper", help="default: %(default)s")
    parser.add_argument("--batch", type=int, default=8, help="default: %(default)s")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps after one warm-up (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="default: %(default)s")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per measurement (default: %(default)s)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = []
    print(f"MC-GCN {args.preset} {args.backbone}, batch {args.batch}, {args.threads} threads: "
          f"forward + backward, median of {args.repeats}")
    for patch in map(int, args.patches.split(",")):
        for variant in args.variants.split(","):
            row = {"patch": patch, "variant": variant, **measure(variant, args.backbone, args.preset, patch,
                                                                 args.batch, args.repeats, args.threads, args.timeout)}
            rows.append(row)
            shown = f"{row['median_s']:.3f} s (min {row['min_s']:.3f})" if row["status"] == "ok" else row["status"]
            print(f"  {patch:4d}  {variant:16s} {shown}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
