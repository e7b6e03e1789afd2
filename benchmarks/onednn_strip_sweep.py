"""Which Kx1 / 1xK convolutions this CPU's oneDNN gets wrong: the sweep behind docs/troubleshooting.md.

Each shape runs a forward and backward of ``Conv2d(C, O, (K, 1), padding=(K // 2, 0))`` (or 1xK) on
``N x C x n x n`` in a worker process under glibc's heap checker, with oneDNN's own padding
(``plain``) or with the input padded explicitly (``explicit``, as ``ahnet.models.StripConv2d``),
and compares output and gradients with oneDNN disabled. A crash or hang ends the worker; the
driver notes it and starts the next one.

    python benchmarks/onednn_strip_sweep.py --kernels 15,31,63 --route plain

Prints, per K and orientation, the map sizes n that crashed, hung or differed by more than 1e-4.
Name the CPU's flags beside the figures: ``grep -o 'avx512[a-z_0-9]*' /proc/cpuinfo | sort -u``.
"""

from __future__ import annotations

import argparse
import glob
import os
import queue
import subprocess
import sys
import threading
import time

WORKER = r"""
import sys, torch, torch.nn.functional as F
torch.set_num_threads(int(sys.argv[2]))
explicit = sys.argv[1] == "explicit"
def step(x, w, b, pad, onednn):
    torch.backends.mkldnn.enabled = onednn
    x, w, b = (t.clone().requires_grad_() for t in (x, w, b))
    if explicit and onednn:
        y = F.conv2d(F.pad(x, (pad[1], pad[1], pad[0], pad[0])), w, b)
    else:
        y = F.conv2d(x, w, b, padding=pad)
    y.backward(torch.ones_like(y))
    return y.detach(), x.grad, w.grad, b.grad
for line in sys.stdin:
    k, n, axis, N, C, O = map(int, line.split())
    shape = (k, 1) if axis == 0 else (1, k)
    pad = (k // 2, 0) if axis == 0 else (0, k // 2)
    gen = torch.Generator().manual_seed(k * 1000 + n)
    x = torch.randn(N, C, n, n, generator=gen)
    w = torch.randn(O, C, *shape, generator=gen) / (C * k) ** 0.5
    b = torch.randn(O, generator=gen)
    print("start", flush=True)
    got, ref = step(x, w, b, pad, True), step(x, w, b, pad, False)
    err = max(((g - r).abs().max() / r.abs().max().clamp_min(1e-12)).item() for g, r in zip(got, ref))
    print("done", err, flush=True)
"""


def heap_checker() -> dict[str, str]:
    found = sorted(p for pattern in ("/usr/lib*/libc_malloc_debug.so.0", "/usr/lib*/*/libc_malloc_debug.so.0",
                                     "/lib*/libc_malloc_debug.so.0", "/lib*/*/libc_malloc_debug.so.0")
                   for p in glob.glob(pattern))
    return {"LD_PRELOAD": found[0], "MALLOC_CHECK_": "3"} if found else {}


class Worker:
    def __init__(self, route: str, threads: int):
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, route, str(threads)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     env={**os.environ, **heap_checker()})
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, case: tuple, timeout_s: float) -> str:
        self.proc.stdin.write(" ".join(map(str, case)) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout_s + 30  # the first case also imports torch
        while True:
            try:
                line = self.lines.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                return "hang"
            if line is None:
                return "crash"
            if line.startswith("start"):
                deadline = time.monotonic() + timeout_s
            elif line.startswith("done"):
                return f"error {float(line.split()[1]):.1e}"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", default="3,5,7,9,11,15,21,31,47,63", help="K values (default: %(default)s)")
    parser.add_argument("--route", choices=("plain", "explicit"), default="plain", help="default: %(default)s")
    parser.add_argument("--batch", type=int, default=8, help="N (default: %(default)s)")
    parser.add_argument("--in-channels", type=int, default=64, help="C (default: %(default)s)")
    parser.add_argument("--out-channels", type=int, default=3, help="O (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="default: %(default)s")
    parser.add_argument("--timeout", type=float, default=20, help="seconds per shape (default: %(default)s)")
    args = parser.parse_args(argv)
    worker = Worker(args.route, args.threads)
    print(f"route {args.route}, N={args.batch} C={args.in_channels} O={args.out_channels}, {args.threads} threads, "
          f"heap checker {'on' if heap_checker() else 'not found'}")
    for k in map(int, args.kernels.split(",")):
        for axis, name in ((0, f"{k}x1"), (1, f"1x{k}")):
            bad = []
            for n in range(1, k + 6):
                status = worker.run((k, n, axis, args.batch, args.in_channels, args.out_channels), args.timeout)
                if status in ("crash", "hang"):
                    worker.close()
                    worker = Worker(args.route, args.threads)
                    bad.append(f"{n} ({status})")
                elif float(status.split()[1]) > 1e-4:
                    bad.append(f"{n} ({status})")
            print(f"  K {name:6s} n = 1..{k + 5}: {', '.join(bad) if bad else 'all fine'}", flush=True)
    worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
