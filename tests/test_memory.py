"""The allocator setting of CPU training (issue 12)."""

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_memory_is_kept_for_reuse():
    # In a child process (the setting is process-wide): after keep_freed_memory a freed 256 MB tensor
    # stays mapped (its pages are not faulted in again), without it the mapping goes back.
    code = """
import torch
from ahnet.memory import keep_freed_memory
def rss_mb():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) / 1024
if KEEP:
    assert keep_freed_memory()
base = rss_mb()
x = torch.ones(64 * 2**20)
del x
print(rss_mb() - base)
"""
    kept, returned = (float(subprocess.run([sys.executable, "-c", f"KEEP = {keep}\n" + code], capture_output=True,
                                           text=True, check=True).stdout) for keep in (True, False))
    assert kept > 200 and returned < 50


@pytest.mark.parametrize("lean", [False, True])
def test_cpu_training_keeps_freed_memory_unless_lean(tmp_path, monkeypatch, lean):
    import ahnet.training.trainer as trainer
    from ahnet.training import TrainConfig, Trainer
    from test_training import make_learnable_dataset

    calls = []
    monkeypatch.setattr(trainer, "keep_freed_memory", lambda: calls.append(1) or True)
    data = make_learnable_dataset(tmp_path / "data")
    Trainer(TrainConfig(data=str(data), out=str(tmp_path / "run"), model="3d-unet", patch=(32, 32, 8), batch_size=1,
                        epochs=1, iters_per_epoch=1, workers=0, val_patches=1, device="cpu", lean_memory=lean),
            progress=False).fit()
    assert calls == ([] if lean else [1])
