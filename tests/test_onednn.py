"""Training steps on this CPU's oneDNN kernels, against the same steps with oneDNN disabled.

On AVX-512 CPUs oneDNN's weight gradient of a Kx1 convolution whose padding reaches across its map
corrupted the heap or hung (MC-GCN's K = 63 and 31 on the maps of 32-64 pixel patches). Each check
runs in a child process (``onednn_reference.py``) under glibc's heap checker where it exists, so a
corruption aborts at once and a crash or a hang fails the test that names the network and sizes.
Name the CPU's flags beside any result: ``grep -o 'avx512[a-z_0-9]*' /proc/cpuinfo | sort -u``.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HELPER = Path(__file__).with_name("onednn_reference.py")
#: Each convolution's output and gradients within this of the reference, element-wise relative to
#: each tensor's largest value. The whole step's tensors within STEP_TOLERANCE, norm-wise: max
#: pooling over near-ties routes single gradient elements by rounding, which moved whole weight
#: gradients of correct float32 runs by up to 1.6 % (AVX-512, 2026-12-02); a broken kernel's garbage
#: is of the order of 100 %.
TOLERANCE = 1e-4
STEP_TOLERANCE = 0.05
PATCHES_2D = range(16, 129, 8)


def _heap_checker() -> dict[str, str]:
    """glibc >= 2.34 checks the heap on every malloc/free only with its debug library preloaded."""
    found = sorted(path for pattern in ("/usr/lib*/libc_malloc_debug.so.0", "/usr/lib*/*/libc_malloc_debug.so.0",
                                        "/lib*/libc_malloc_debug.so.0", "/lib*/*/libc_malloc_debug.so.0")
                   for path in glob.glob(pattern))
    return {"LD_PRELOAD": found[0], "MALLOC_CHECK_": "3"} if found else {}


def run_checks(cases: list[dict], tmp_path: Path, timeout_s: float) -> list[dict]:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"threads": 2, "cases": cases}))
    env = {**os.environ, **_heap_checker()}
    try:
        proc = subprocess.run([sys.executable, str(HELPER), str(plan)], capture_output=True, text=True,
                              timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as err:
        done = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        pytest.fail(f"hung after {timeout_s} s in case {len(done.splitlines())} of {cases}")
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    if proc.returncode != 0:
        culprit = cases[len(results)] if len(results) < len(cases) else None
        pytest.fail(f"the check process died (exit {proc.returncode}) in {culprit}:\n{proc.stderr[-2000:]}")
    assert len(results) == len(cases)
    return results


def assert_within_tolerance(results: list[dict]) -> None:
    bad = [(r["case"], r[f"{part}_error"], r[f"{part}_worst"]) for r in results
           for part, tolerance in (("step", STEP_TOLERANCE), ("convolution", TOLERANCE))
           if not r[f"{part}_error"] <= tolerance]
    assert not bad, f"{len(bad)} result(s) differ from the reference by more than the tolerance: {bad}"


def mcgcn(preset: str, patch: int, backbone: str = "resnet18", batch: int = 2) -> dict:
    return {"build": {"name": "mc-gcn", "image_channels": 1, "out_channels": 2, "backbone": backbone,
                      "preset": preset}, "shape": [batch, 3, patch, patch]}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("preset", ["paper", "released"])
def test_mcgcn_training_step_matches_reference_at_every_patch(preset, tmp_path):
    cases = [mcgcn(preset, patch) for patch in PATCHES_2D]
    if preset == "paper":  # the GCN kernels are the same for every backbone; the widths are not
        cases += [mcgcn(preset, patch, "resnet50") for patch in (32, 64)]
    assert_within_tolerance(run_checks(cases, tmp_path, timeout_s=240))


def network(name: str, shape: list[int], **build) -> dict:
    return {"build": {"name": name, "image_channels": 1, "out_channels": 2, **build}, "shape": shape}


#: The networks at the sizes the tests (32x32x8), the demo (its tiny and cpu scales) and the
#: README's examples use (its 96x80x20 AH-Net example runs padded to 96x96x32, as 96x96x16 does).
#: Batches of one at the larger sizes keep the suite fast; the kernels do not depend on the batch.
NETWORK_CASES = {
    "ahnet-paper": [network("ahnet", [2, 1, 32, 32, 8], backbone="resnet18"),
                    network("ahnet", [1, 1, 96, 96, 16], backbone="resnet18")],
    "ahnet-released": [network("ahnet", [2, 1, 32, 32, 8], backbone="resnet18", preset="released"),
                       network("ahnet", [1, 1, 96, 96, 16], backbone="resnet18", preset="released")],
    "ahnet-ablations": [network("ahnet", [2, 1, 32, 32, 8], backbone="resnet18", options=options)
                        for options in ({"pyramid_pools": []}, {"dense_layer": "isotropic"})],
    "mc-gcn": [network("mc-gcn", [2, 3, 96, 96], backbone="resnet18"),
               network("mc-gcn", [2, 3, 96, 96], backbone="resnet18", preset="released")],
    "2d-unet": [network("2d-unet", [2, 3, 32, 32]), network("2d-unet", [1, 3, 96, 96])],
    "3d-unet": [network("3d-unet", [2, 1, 32, 32, 8]), network("3d-unet", [1, 1, 96, 96, 16])],
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("network", sorted(NETWORK_CASES))
def test_training_step_and_its_convolutions_match_reference(network, tmp_path):
    assert_within_tolerance(run_checks(NETWORK_CASES[network], tmp_path, timeout_s=240))
