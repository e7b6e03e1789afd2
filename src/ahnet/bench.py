"""``ahnet bench``: Table 3 reproduced on this machine, and each time read against its hardware limit.

Table 3 times one forward of each network on a 384x256x64 volume (GTX 1080Ti). Here every network
runs on the same volume ``(1, 1, X, Y, Z)``: AH-Net and the 3D U-Net on it directly, MC-GCN and the
2D U-Net slice-wise on the 3-slice stacks of all Z slices (§3.1; MC-GCN in one batch), each through its
default inference path (:func:`ahnet.models.fast.optimize_for_inference`). MONAI's ``AHNet``
(trilinear, 4 pyramid levels; the network of our ``released`` preset, 27,085,500 parameters) is
timed beside it as a reference, and our released AH-Net without the fast path as well.

Models alternate within each repeat, so a noisy neighbour slows all of them alike; the times are
the median (min, max) of ``repeats`` forwards after one warm-up. FLOPs are counted per forward
(``torch.utils.flop_counter``, on the meta device) and set against the practical peak of the same
device: the best of a few large matrix products in the same dtype, measured in the same run. Peak
memory comes from a fresh child process per model (its peak RSS on CPU, the CUDA allocator's peak
on GPU), so one model's memory never hides another's.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from .errors import ConfigError, DataError

#: Rows of the table (``--json`` keys, in order): the Table 2 network each is, and its Table 3 column.
#: ``ahnet-released-plain`` is the plain module, without :func:`optimize_for_inference`.
ROWS: dict[str, tuple[str, str, str]] = {
    "ahnet-paper": ("ahnet", "paper", "ahnet"),
    "ahnet-released": ("ahnet", "released", "ahnet"),
    "ahnet-released-plain": ("ahnet", "released", "ahnet"),
    "mc-gcn-paper": ("mc-gcn", "paper", "mc-gcn"),
    "mc-gcn-released": ("mc-gcn", "released", "mc-gcn"),
    "2d-unet": ("2d-unet", "paper", "2d-unet"),
    "3d-unet": ("3d-unet", "paper", "3d-unet"),
    "monai-ahnet": ("monai", "", "ahnet"),
}
#: Slices per batch of the slice-wise networks: MC-GCN takes all slices at once; the 2D U-Net keeps
#: 64 full-resolution maps per slice, so all 64 slices of 384x256 at once would need about 9 GB.
SLICE_WISE = {"mc-gcn": None, "2d-unet": 8}
#: The AH-Net every ratio refers to (Table 2's and MONAI's network).
REFERENCE = "ahnet-released"
#: Table 3 of the paper: ms per 384x256x64 volume on a GTX 1080Ti.
TABLE3_MS = {"ahnet": 17.7, "mc-gcn": 775.2, "2d-unet": 699.3, "3d-unet": 2.3}
PAPER_SIZE = (384, 256, 64)
#: Training rows (issue 12): forward, backward and an Adam step on batches of ``TRAIN_BATCH``
#: patches of each of ``TRAIN_SIZES``: the demo's CT-like patch and the paper's CT patch (§4.2).
TRAIN_SIZES, TRAIN_BATCH = ((96, 96, 16), (192, 192, 64)), 2
#: The rows that can train: ours (slice-major, freed memory kept as ``ahnet train3d`` keeps it on
#: the CPU), the same network on the plain 3D route and MONAI's, both with the allocator's
#: defaults; MONAI's also with freed memory kept, to tell the allocator's share from the kernels'.
TRAIN_ROWS = ("ahnet-paper", "ahnet-released", "ahnet-released-plain", "monai-ahnet")
MEMORY_KEPT = " (memory kept)"
#: Ours once more with activation recomputation (``--recompute``, :mod:`ahnet.models.recompute`).
RECOMPUTED = " (recompute)"


def parse_size(text: str, option: str = "--size") -> tuple[int, int, int]:
    """``"384x256x64"`` to ``(384, 256, 64)``; a clear :class:`ConfigError` naming ``option`` otherwise."""
    try:
        size = tuple(int(s) for s in text.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise ConfigError(f"{option} must be XxYxZ with positive integers, such as 384x256x64; got {text!r}")
    return size  # type: ignore[return-value]


def check_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``, and available."""
    if device != "cpu" and not (device == "cuda" or device.startswith("cuda:")):
        raise ConfigError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if device != "cpu" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available to this torch "
                          f"({torch.__version__}); use --device cpu")
    return torch.device(device)


def _network(row: str) -> nn.Module:
    """The plain network of a row, as ``ahnet summary`` (Table 2) builds it."""
    if row == "monai-ahnet":
        from monai.networks.nets import AHNet as MonaiAHNet

        return MonaiAHNet(upsample_mode="trilinear", psp_block_num=4)
    from .summary import TABLE2

    name, preset, _ = ROWS[row]
    return next(build for n, p, build, *_ in TABLE2 if (n, p) == (name, preset))()


class _PadTo(nn.Module):
    """MONAI's AHNet needs X, Y multiples of 64 (at least 128) and Z of 32: pad, run, crop back."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @staticmethod
    def padded(size: tuple[int, ...]) -> tuple[int, ...]:
        return (*(max(128, -(-s // 64) * 64) for s in size[:2]), -(-size[2] // 32) * 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[2:])
        target = self.padded(size)
        if target == size:
            return self.model(x)
        x = F.pad(x, [0, target[2] - size[2], 0, target[1] - size[1], 0, target[0] - size[0]])
        return self.model(x)[..., : size[0], : size[1], : size[2]]


def _on_volume(row: str, network: nn.Module, slices: int) -> nn.Module:
    """``network`` taking the ``(1, 1, X, Y, Z)`` volume: slice-wise stacks or padded as needed."""
    from .inference.predictor import SliceStacks

    if row == "monai-ahnet":
        return _PadTo(network)
    name = ROWS[row][0]
    return SliceStacks(network, SLICE_WISE[name] or slices) if name in SLICE_WISE else network


def _runner(row: str, slices: int) -> nn.Module:
    """A row as it runs: each network's default inference path (the plain module for MONAI and
    ``ahnet-released-plain``)."""
    from .models.fast import optimize_for_inference

    network = _network(row).eval()
    if row != "monai-ahnet" and not row.endswith("-plain"):
        network = optimize_for_inference(network)
    return _on_volume(row, network, slices)


def count_gflops(row: str, size: tuple[int, int, int]) -> float:
    """GFLOP (multiply-add = 2) of one forward of ``row`` on a ``(1, 1, *size)`` volume; 2D networks
    are counted on one slice's stack, times Z."""
    name, preset, _ = ROWS[row]
    if name in SLICE_WISE:
        return _count_gflops(name, preset, (*size[:2], 1)) * size[2]
    return _count_gflops(name, preset, tuple(size))


@functools.lru_cache(maxsize=None)
def _count_gflops(name: str, preset: str, size: tuple[int, int, int]) -> float:
    row = next(r for r, spec in ROWS.items() if spec[:2] == (name, preset))
    with torch.device("meta"):
        runner = _on_volume(row, _network(row).eval(), size[2])
        with FlopCounterMode(display=False) as counter:
            runner(torch.empty(1, 1, *size))
    return counter.get_total_flops() / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device):
    """bf16 autocast on CUDA (tensor cores), none on CPU (no bf16 units on most CPUs)."""
    return torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else nullcontext()


def matmul_peak_gflops(device: torch.device, seconds: float = 0.5) -> float:
    """Practical peak: the best GFLOP/s of square matrix products in the forward's dtype."""
    n = 8192 if device.type == "cuda" else 2048
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end or best == 0.0:
        _sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def _time_forward(runner: nn.Module, x: torch.Tensor) -> float:
    with torch.inference_mode(), _autocast(x.device):
        _sync(x.device)
        t = time.perf_counter()
        runner(x)
        _sync(x.device)
    return time.perf_counter() - t


def _status_mb(field: str) -> float:
    """``VmRSS``/``VmHWM`` of this process in MB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"no {field} in /proc/self/status")


def _peak_child(row: str, size: tuple[int, int, int], device: str, threads: int) -> tuple[float, float]:
    """In a fresh process: (peak, before-forward) memory in MB of one forward of ``row``."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    runner = _runner(row, size[2]).to(dev)
    x = torch.randn(1, 1, *size, device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev) / 2**20
    else:
        base = _status_mb("VmRSS")
    _time_forward(runner, x)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else _status_mb("VmHWM")
    return peak, base


def _train_child(row: str, size: tuple[int, int, int], device: str, threads: int, steps: int,
                 keep_memory: bool, recompute: bool = False) -> dict:
    """In a fresh process: ``steps`` training steps (forward, backward, Adam) of ``row`` on batches
    of ``TRAIN_BATCH`` patches of ``size`` after one warm-up; times and the process's peak memory.
    MONAI's AHNet gets the patch zero-padded to its smallest valid size, as a user would have to.
    ``keep_memory``: :func:`ahnet.memory.keep_freed_memory` first (on the CPU); ``recompute``: the
    model's activation recomputation on."""
    from .memory import keep_freed_memory

    torch.set_num_threads(threads)
    dev = torch.device(device)
    if keep_memory and dev.type == "cpu":
        keep_freed_memory()
    model = _network(row)
    if row.endswith("-plain"):
        model.slice_major = False
    if recompute:
        model.recompute = True
    shape = _PadTo.padded(size) if row == "monai-ahnet" else tuple(size)
    model = model.to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(TRAIN_BATCH, 1, *shape, device=dev, generator=gen)
    target = None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(steps + 1):  # the first is the warm-up
        _sync(dev)
        t = time.perf_counter()
        with _autocast(dev):
            out = model(x)
        if target is None:  # in the warm-up step, which is not counted
            target = torch.rand(out.shape, device=dev, generator=gen)
        loss = F.mse_loss(out.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(dev)
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else _status_mb("VmHWM")
    step = statistics.median(times[1:])
    return {"patch": list(size), "ran_on": list(shape), "batch": TRAIN_BATCH, "steps": steps,
            "memory_kept": keep_memory and dev.type == "cpu", "recompute": recompute,
            "median_step_s": step, "min_step_s": min(times[1:]), "max_step_s": max(times[1:]),
            "patches_per_s": TRAIN_BATCH / step, "peak_mem_mb": peak}


_TASKS: dict[str, Callable] = {"peak": _peak_child, "train": _train_child}
_RESULT = "ahnet-bench-result:"


def _serve_children() -> None:
    """A process that only imported torch and ahnet (and MONAI): for each task read on stdin, one
    forked child runs it and the result goes to stdout. Forking is safe here because this process
    never ran an operator (no thread pools, no CUDA context); each child starts from that state."""
    try:
        import monai.networks.nets  # noqa: F401  (imported once here, shared by every child alike)
    except ImportError:
        pass
    for line in iter(sys.stdin.readline, ""):
        kind, args = json.loads(line)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                out = {"ok": _TASKS[kind](*args)}
            except BaseException as err:  # reported to the parent, which raises
                out = {"error": f"{type(err).__name__}: {err}"}
            with os.fdopen(write, "w") as f:
                json.dump(out, f)
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            data = f.read()
        os.waitpid(pid, 0)
        print(_RESULT + (data or json.dumps({"error": "child process died"})), flush=True)


class _Children:
    """Client of :func:`_serve_children` (one server per bench run)."""

    def __enter__(self) -> "_Children":
        self.proc = subprocess.Popen([sys.executable, "-c", "from ahnet.bench import _serve_children; _serve_children()"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return self

    def run(self, kind: str, *args):
        self.proc.stdin.write(json.dumps([kind, args]) + "\n")
        self.proc.stdin.flush()
        for line in iter(self.proc.stdout.readline, ""):
            if line.startswith(_RESULT):
                out = json.loads(line[len(_RESULT):])
                if "error" in out:
                    raise RuntimeError(f"bench child ({kind} {args}): {out['error']}")
                return out["ok"]
        raise RuntimeError("the bench's child-process server exited")

    def __exit__(self, *exc) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def machine(device: torch.device) -> str:
    """The CPU model (``/proc/cpuinfo``) and cores, or the GPU's name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores"


def _train_rows(rows: tuple[str, ...]) -> list[tuple[str, str, bool, bool]]:
    """(label, row, freed memory kept, recompute) of each training run: ours as the trainer runs, and
    once more with recomputation; the others with the allocator's defaults, and MONAI's once more with
    freed memory kept."""
    runs = []
    for row in rows:
        if row not in TRAIN_ROWS:
            continue
        ours = not row.endswith("-plain") and row != "monai-ahnet"
        runs.append((row, row, ours, False))
        if ours:
            runs.append((row + RECOMPUTED, row, True, True))
    if "monai-ahnet" in rows:
        runs.append(("monai-ahnet" + MEMORY_KEPT, "monai-ahnet", True, False))
    return runs


def run_bench(device: str = "cpu", size: tuple[int, int, int] = PAPER_SIZE, repeats: int = 3,
              rows: tuple[str, ...] = tuple(ROWS), train_steps: int = 0, progress: bool = True,
              train_sizes: tuple[tuple[int, int, int], ...] = TRAIN_SIZES) -> dict:
    """Time, FLOPs and peak memory of each row on one ``(1, 1, *size)`` volume; see the module doc.

    ``train_steps`` > 0 also times that many training steps of each AH-Net row (``TRAIN_ROWS``) at
    each of ``train_sizes`` (batch ``TRAIN_BATCH``), each row in its own process (its peak memory).
    Returns a dict: ``device``, ``size``, ``peak_gflops_s`` and context, plus one entry per row with
    ``median_s``, ``min_s``, ``max_s``, ``peak_mem_mb`` (and ``base_mem_mb`` before the forward),
    ``gflops``, ``gflops_s``, ``peak_fraction``, ``time_ratio`` and ``flop_ratio`` (to
    ``ahnet-released``), and ``table3_ms`` (the paper's GPU time).
    """
    from tqdm import tqdm

    dev = check_device(device)
    size = tuple(size)
    if len(size) != 3 or min(size) < 1:
        raise ConfigError(f"size must be three positive integers, got {size}")
    if repeats < 1 or train_steps < 0:
        raise ConfigError(f"--repeats must be >= 1 and --train-steps >= 0, got {repeats} and {train_steps}")
    unknown = sorted(set(rows) - set(ROWS))
    if unknown or not rows:
        raise ConfigError(f"unknown model(s) {unknown}; choose from {', '.join(ROWS)}")
    if "monai-ahnet" in rows:
        try:
            import monai.networks.nets  # noqa: F401
        except ImportError:
            rows = tuple(r for r in rows if r != "monai-ahnet")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    threads = torch.get_num_threads()
    train_rows = _train_rows(rows) if train_steps else []
    bar = tqdm(total=len(rows) * (repeats + 2) + len(train_rows) * len(train_sizes), desc="bench", unit="run",
               disable=None if progress else True)
    try:
        bar.set_postfix_str("matmul peak")
        peak = matmul_peak_gflops(dev)
        x = torch.randn(1, 1, *size, device=dev, generator=torch.Generator(device=dev).manual_seed(0))
        runners = {row: _runner(row, size[2]).to(dev) for row in rows}
        times: dict[str, list[float]] = {row: [] for row in rows}
        for repeat in range(repeats + 1):  # round 0 is the warm-up
            for row in rows:
                bar.set_postfix_str(f"{row} ({'warm-up' if repeat == 0 else f'repeat {repeat}'})")
                t = _time_forward(runners[row], x)
                if repeat:
                    times[row].append(t)
                bar.update()
        del runners
        memory: dict = {}
        train: dict = {}
        with _Children() as children:
            for row in rows:
                bar.set_postfix_str(f"{row} (peak memory, own process)")
                memory[row] = children.run("peak", row, size, str(dev), threads)
                bar.update()
            for patch in train_sizes:
                key = "x".join(map(str, patch))
                for label, row, keep, recompute in train_rows:
                    bar.set_postfix_str(f"{label} training at {key} (own process)")
                    train.setdefault(key, {})[label] = children.run("train", row, patch, str(dev), threads,
                                                                    train_steps, keep, recompute)
                    bar.update()
        peak = max(peak, matmul_peak_gflops(dev))
    finally:
        bar.close()

    result: dict = {"device": str(dev), "machine": machine(dev), "threads": threads, "torch": torch.__version__,
                    "dtype": "bfloat16" if dev.type == "cuda" else "float32", "size": list(size),
                    "repeats": repeats, "peak_gflops_s": peak}
    ref = statistics.median(times[REFERENCE]) if REFERENCE in rows else None
    ref_flops = count_gflops(REFERENCE, size)
    for row in rows:
        median, flops = statistics.median(times[row]), count_gflops(row, size)
        result[row] = {
            "median_s": median, "min_s": min(times[row]), "max_s": max(times[row]),
            "peak_mem_mb": memory[row][0], "base_mem_mb": memory[row][1],
            "gflops": flops, "gflops_s": flops / median, "peak_fraction": flops / median / peak,
            "time_ratio": median / ref if ref else None, "flop_ratio": flops / ref_flops,
            "table3_ms": TABLE3_MS[ROWS[row][2]],
        }
        if row == "monai-ahnet" and _PadTo.padded(size) != size:
            result[row]["padded_to"] = list(_PadTo.padded(size))
    if train:
        result["train"] = train
    return result


def format_table(result: dict) -> str:
    """The result as a text table, Table 3's times beside, then the headline comparisons."""
    rows = [r for r in ROWS if r in result]
    size = "x".join(map(str, result["size"]))
    lines = [
        f"Table 3 on {result['device']} ({result['machine']}; {result['threads']} threads; torch {result['torch']}, "
        f"{result['dtype']}): one {size} volume, median (min-max) of {result['repeats']} after a warm-up",
        f"practical peak (matrix product): {result['peak_gflops_s']:.1f} GFLOP/s",
        "",
        f"{'model':<22}{'median s':>10}{'min-max s':>16}{'peak MB':>9}{'GFLOP':>9}{'GFLOP/s':>9}{'% peak':>7}"
        f"{'time/AH':>9}{'FLOP/AH':>9}{'paper ms':>10}",
    ]
    lines.append("-" * len(lines[-1]))
    for row in rows:
        r = result[row]
        ratio = "" if r["time_ratio"] is None else f"{r['time_ratio']:.2f}"
        lines.append(
            f"{row:<22}{r['median_s']:>10.3f}{r['min_s']:>8.3f}-{r['max_s']:<7.3f}{r['peak_mem_mb']:>9.0f}"
            f"{r['gflops']:>9.1f}{r['gflops_s']:>9.1f}{100 * r['peak_fraction']:>6.0f}%{ratio:>9}"
            f"{r['flop_ratio']:>9.2f}{r['table3_ms']:>10.1f}"
        )
    notes = ["", "time/AH, FLOP/AH: ratio to ahnet-released; paper ms: Table 3 (GTX 1080Ti, 384x256x64)."]
    if "monai-ahnet" in result and REFERENCE in result:
        ours, monai = result[REFERENCE], result["monai-ahnet"]
        notes.append(f"ahnet-released vs MONAI AHNet: {ours['median_s'] / monai['median_s']:.2f}x the time, "
                     f"{ours['peak_mem_mb'] / monai['peak_mem_mb']:.2f}x the peak memory.")
        if "padded_to" in monai:
            notes.append(f"MONAI's AHNet ran on the volume zero-padded to {'x'.join(map(str, monai['padded_to']))}"
                         " (its smallest valid size).")
    for patch, trained in result.get("train", {}).items():
        notes += ["", f"training step (forward, backward, Adam) on {TRAIN_BATCH} patches of {patch}, "
                  f"median (min-max) of {next(iter(trained.values()))['steps']} after a warm-up:",
                  f"{'model':<28}{'step s':>9}{'min-max s':>16}{'patches/s':>11}{'peak MB':>9}{'time/MONAI':>12}"
                  f"{'mem/MONAI':>11}"]
        monai = trained.get("monai-ahnet")  # as MONAI's users run it
        for row, t in trained.items():
            vs = (f"{t['median_step_s'] / monai['median_step_s']:>12.2f}{t['peak_mem_mb'] / monai['peak_mem_mb']:>11.2f}"
                  if monai else "")
            ran = "" if t["ran_on"] == t["patch"] else f"  (padded to {'x'.join(map(str, t['ran_on']))})"
            notes.append(f"{row:<28}{t['median_step_s']:>9.3f}{t['min_step_s']:>8.3f}-{t['max_step_s']:<7.3f}"
                         f"{t['patches_per_s']:>11.3f}{t['peak_mem_mb']:>9.0f}{vs}{ran}")
    return "\n".join(lines + notes)


# --- `ahnet bench --predict`: the whole prediction, ours against MONAI's network --------------------

#: What MONAI's port of our weights computes differently (:mod:`ahnet.models.monai_interop`).
MONAI_DIFFERENCE = ("MONAI's trilinear up-sampling aligns corners (align_corners=True), ours does not; no MONAI "
                    "option removes this, so the two label maps need not agree exactly")


def _summary_s(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "times_s": times}


def _class_dice(a, b, classes: int) -> dict[str, float]:
    """Dice of each foreground class (label values 1 .. classes-1) between two label maps."""
    from .evaluation.segmentation import dice

    return {str(c): dice(a == c, b == c) for c in range(1, classes)}


def run_predict_bench(checkpoint: str, image: str, gt: str | None = None, device: str = "cpu", repeats: int = 1,
                      window: tuple[int, int, int] | None = None, progress: bool = True) -> dict:
    """``ahnet predict`` end to end on one image (reading, preprocessing, sliding windows, resampling
    back, labels), with our network (the eval-only fast path) and with MONAI's ``AHNet`` carrying the
    same weights (:func:`~ahnet.models.monai_interop.to_monai_ahnet`, MONAI's plain module), everything
    else the same: window, overlap, batch, pre- and post-processing. ``checkpoint`` is what
    ``ahnet predict -m`` takes (a file, or a run folder with its fold models and its plan's
    post-processing).

    The two alternate within each of ``repeats`` rounds, ours first, without a warm-up: a user's
    single ``ahnet predict`` pays the first call's costs too. Returns the times (median, min, max),
    their ratio, how far the two label maps agree, and each one's Dice against ``gt`` if given.
    """
    from tqdm import tqdm

    from .data.volume import load_volume, read_header
    from .evaluation.segmentation import _read_label
    from .inference.predictor import Predictor
    from .models.monai_interop import check_size, size_multiple, to_monai_ahnet
    from .pipeline import resolve_models, run_postprocessing

    dev = check_device(device)
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
    if not Path(image).is_file():
        raise DataError(f"{image}: no such image file")
    if gt is not None and not Path(gt).is_file():
        raise DataError(f"{gt}: no such ground-truth file")
    models = resolve_models(checkpoint)
    options = {"device": str(dev), "window": window,
               "largest_component": bool(run_postprocessing(checkpoint).get("largest_component", False))}

    multiples: list[tuple[int, int, int]] = []

    def monai_port(model: nn.Module) -> nn.Module:
        net = to_monai_ahnet(model, allow_aligned_corners=True).eval()
        multiples.append(size_multiple(model))
        return net

    theirs = Predictor(models, prepare=monai_port, **options)  # first: an unmappable network fails at once
    if not theirs.task.label_maps:
        raise ConfigError(f"bench --predict compares segmentation labels; this checkpoint is a {theirs.task.title} "
                          "model (no label maps)")
    for (_, size, _), multiple in zip(theirs.members, multiples):
        check_size(size, multiple, "window (--window or the training patch)")
    case = Path(image).name.split(".nii")[0]
    truth = _read_label(Path(gt), case, "ground truth")[0] if gt else None
    file_shape = read_header(image).file_shape
    if truth is not None and truth.shape != file_shape:
        raise DataError(f"{gt}: ground truth of shape {truth.shape}, the image {image} has {file_shape}")
    load_volume(image)  # the file in the OS cache for both
    ours = Predictor(models, **options)
    pipelines = {"ahnet": ours, "monai-ahnet": theirs}
    times: dict[str, list[float]] = {name: [] for name in pipelines}
    labels: dict = {}
    with tqdm(total=repeats * 2, desc="bench --predict", unit="run", disable=None if progress else True) as bar:
        for repeat in range(repeats):
            for name, predictor in pipelines.items():
                bar.set_postfix_str(f"{name} (repeat {repeat + 1})")
                _sync(dev)
                t = time.perf_counter()
                labels[name] = predictor.predict_case(case, [image]).labels
                _sync(dev)
                times[name].append(time.perf_counter() - t)
                bar.update()
    a, b = labels["ahnet"], labels["monai-ahnet"]
    classes = int(ours.meta["out_channels"])
    import monai

    result: dict = {
        "mode": "predict", "device": str(dev), "machine": machine(dev), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "monai": monai.__version__, "checkpoint": str(checkpoint),
        "image": str(image), "gt": gt, "shape": list(a.shape), "window": list(ours.window),
        "overlap": ours.overlap, "batch_size": ours.batch_size, "largest_component": ours.largest_component,
        "repeats": repeats, "ahnet": _summary_s(times["ahnet"]), "monai-ahnet": _summary_s(times["monai-ahnet"]),
        "label_agreement": float((a == b).mean()), "dice_between": _class_dice(a, b, classes),
        "monai_difference": MONAI_DIFFERENCE,
    }
    result["time_ratio"] = result["ahnet"]["median_s"] / result["monai-ahnet"]["median_s"]
    if truth is not None:
        result["dice_vs_gt"] = {name: _class_dice(labels[name], truth, classes) for name in pipelines}
    return result


def format_predict_table(result: dict) -> str:
    """The ``--predict`` result as a small text table."""
    gt = result.get("dice_vs_gt")
    lines = [
        f"ahnet predict end to end on {result['image']} ({'x'.join(map(str, result['shape']))}), window "
        f"{'x'.join(map(str, result['window']))}, overlap {result['overlap']}, on {result['device']} "
        f"({result['machine']}; {result['threads']} threads): median (min-max) of {result['repeats']}",
        "",
        f"{'pipeline':<14}{'median s':>10}{'min-max s':>14}" + ("  Dice vs GT (class: Dice)" if gt else ""),
    ]
    for name in ("ahnet", "monai-ahnet"):
        r = result[name]
        spread = f"{r['min_s']:.2f}-{r['max_s']:.2f}"
        dice = "  " + ", ".join(f"{c}: {d:.4f}" for c, d in gt[name].items()) if gt else ""
        lines.append(f"{name:<14}{r['median_s']:>10.2f}{spread:>14}{dice}")
    between = ", ".join(f"{c}: {d:.4f}" for c, d in result["dice_between"].items())
    lines += ["", f"ours / MONAI: {result['time_ratio']:.2f}x the time",
              f"labels: {100 * result['label_agreement']:.3f}% of voxels equal; Dice between the two "
              f"(class: Dice): {between or 'no foreground class'}",
              f"note: {result['monai_difference']}"]
    return "\n".join(lines)
