"""Where a process runs: its device and, under ``torchrun``, its place in the process group.

Training (DDP, ``torchrun``) and prediction share the device rule; only training joins a process
group (:class:`Distributed`), so predicting inside a ``torchrun`` job picks this process's GPU
without waiting for the others.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn as nn

from .errors import ConfigError


def world_size() -> int:
    """Processes of this job (``WORLD_SIZE``, set by ``torchrun``; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def wants_cuda(device: str) -> bool:
    """Whether ``device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``) runs on a GPU here."""
    if device == "cpu":
        return False
    return device.startswith("cuda:") or (device in ("auto", "cuda") and torch.cuda.is_available())


def select_device(device: str) -> torch.device:
    """The ``torch.device`` for ``device``: ``auto`` is the GPU where there is one (this process's
    ``LOCAL_RANK`` under ``torchrun``), else the CPU; an unavailable choice is a :class:`ConfigError`."""
    world = world_size()
    if device.startswith("cuda:") and world == 1:
        return torch.device(device)
    if wants_cuda(device):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} is not available: this machine has no CUDA GPU (use auto or cpu)")
        chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else 0)
        torch.cuda.set_device(chosen)
        return chosen
    if device in ("auto", "cpu"):
        return torch.device("cpu")
    raise ConfigError(f"device {device!r} is not available (use auto, cpu, cuda or cuda:N)")


class Distributed:
    """Rank, world size and device of a training process; joins the process group under ``torchrun``."""

    def __init__(self, device: str):
        self.world = world_size()
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if wants_cuda(device) else "gloo")
        self.rank = dist.get_rank() if self.world > 1 else 0
        self.device = select_device(device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (all ranks then act alike, e.g. stop at the same step)."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def sync_buffers(self, model: nn.Module) -> None:
        """Batch-norm statistics from rank 0 everywhere (DDP syncs them before, not after, a forward)."""
        if self.world > 1:
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` as this job trains it: itself alone, in DDP under ``torchrun``."""
        if self.world == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
