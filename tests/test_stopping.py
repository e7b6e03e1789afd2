"""SIGTERM while a training step never returns: the run still ends, in bounded time, saying what
was saved and how to resume (a native kernel that hangs cannot run Python's signal handlers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ahnet.training import load_checkpoint

from datasets import make_seg_dataset

TESTS = Path(__file__).parent

#: The child trains a tiny 3D U-Net; in the epoch ``stuck_epoch`` its forward blocks SIGINT and
#: SIGTERM in the main thread and waits forever, as a hung native kernel would: the signals then
#: reach another thread, and Python never gets to run its handler in the main thread.
CHILD = r"""
import signal, sys, threading
sys.path.insert(0, sys.argv[1])
import ahnet.training.stopping as stopping
from ahnet.training import TrainConfig, Trainer

data, out, grace, stuck_epoch = sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
stopping.STOP_GRACE_S = grace
trainer = Trainer(TrainConfig(data=data, out=out, model="3d-unet", patch=(16, 16, 4), batch_size=2, epochs=3,
                              iters_per_epoch=2, workers=0, val_patches=1, device="cpu", augment=False),
                  progress=False)
forward = trainer.model.forward

def stuck_forward(x):
    if trainer.epoch >= stuck_epoch and trainer.model.training:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        print("stuck", flush=True)
        lock = threading.Lock()
        lock.acquire()
        lock.acquire()
    return forward(x)

trainer.model.forward = stuck_forward
trainer.fit()
"""


def start_stuck_run(tmp_path: Path, grace_s: float, stuck_epoch: int) -> subprocess.Popen:
    data = make_seg_dataset(tmp_path / "data", cases=3)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(TESTS), str(data), str(tmp_path / "run"), str(grace_s),
                             str(stuck_epoch)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()  # blocks until the step is stuck (or the child failed)
    assert line == "stuck\n", proc.communicate(timeout=60)[1]
    return proc


def stop(proc: subprocess.Popen, signals: int, limit_s: float) -> tuple[int, str, float]:
    start = time.monotonic()
    for _ in range(signals):
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
    try:
        _, err = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"the run did not stop within {limit_s} s of SIGTERM")
    return proc.returncode, err, time.monotonic() - start


@pytest.mark.timeout(180)
def test_sigterm_during_a_step_that_never_returns_ends_the_run_after_the_grace(tmp_path):
    proc = start_stuck_run(tmp_path, grace_s=3, stuck_epoch=1)
    code, err, seconds = stop(proc, signals=1, limit_s=60)
    assert code == 128 + signal.SIGTERM
    assert 3 <= seconds < 30
    latest = tmp_path / "run" / "checkpoint_latest.pt"
    assert "SIGTERM: the training step in progress did not return within 3 s" in err
    assert f"{latest} (written " in err and "continue with --resume" in err
    assert load_checkpoint(latest, kind="train")["epoch"] == 1  # epoch 0 is saved and resumable


@pytest.mark.timeout(180)
def test_a_second_sigterm_ends_a_stuck_run_at_once(tmp_path):
    proc = start_stuck_run(tmp_path, grace_s=600, stuck_epoch=0)
    code, err, seconds = stop(proc, signals=2, limit_s=60)
    assert code == 128 + signal.SIGTERM
    assert seconds < 20  # the second-signal wait, far from the 600 s grace
    assert "a second signal arrived while the training step was still running" in err
    assert "No checkpoint was written yet" in err and "start the run again" in err
