"""What a file handed to ahnet as PyTorch weights really is, for error messages a user can act on.

Every load is ``torch.load(weights_only=True)``; when it refuses a file, or the file holds something
other than what was asked for, these name it (not a PyTorch file, pickled code, a torchvision state
dict, a MONAI bundle, ...) instead of quoting PyTorch's error, whose advice to retry with
``weights_only=False`` must never reach a user holding a file they did not make.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

#: What ahnet reads, for messages about files that are something else.
AHNET_FILES = "ahnet reads the checkpoint_*.pt files of train2d / train3d and the output of ahnet transfer"


def why_unreadable(path: Path, err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused ``path``, in words a user can act on. Never
    PyTorch's own advice to load with ``weights_only=False``: that runs whatever code the file holds."""
    with open(path, "rb") as f:
        head = f.read(348)
    zip_file = head.startswith(b"PK\x03\x04")  # torch's format
    legacy_pickle = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")  # protocol 2-5
    if not (zip_file or legacy_pickle):
        if head.startswith(b"\x1f\x8b"):
            return "a gzip file (a .nii.gz volume?), not a PyTorch file"
        if len(head) >= 348 and head[344:347] in (b"n+1", b"ni1"):
            return "a NIfTI volume, not a PyTorch file"
        if head.startswith(b"\x89HDF"):
            return "an HDF5 file (Keras or TensorFlow weights?), not a PyTorch file"
        return "not a PyTorch file at all"
    found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(err))
    if found or "Weights only load failed" in str(err):
        held = f" ({found.group(1)})" if found else ""
        return (f"it holds pickled Python objects{held}, which ahnet never loads because unpickling them "
                f"can run any code; {AHNET_FILES}")
    return f"a damaged or truncated PyTorch file ({err.__class__.__name__})"


def describe_payload(payload: Any) -> str:
    """What a PyTorch file holds, when it is not what was asked for."""
    if isinstance(payload, dict) and payload.get("format") == "ahnet-checkpoint":
        return f"an ahnet {payload.get('kind')!r} checkpoint (for --init, --resume or predict -m)"
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        keys = list(payload)
        if {"conv1.weight", "fc.weight"} <= set(keys):
            return "a torchvision ResNet state dict (ImageNet weights go to `ahnet train2d --pretrained`)"
        return (f"a bare state dict of {len(keys)} tensors ({', '.join(keys[:3])}, ...) without the network "
                f"description ahnet needs; {AHNET_FILES}")
    if isinstance(payload, dict):
        keys = sorted(map(str, payload))[:6]
        return f"a dict with keys {', '.join(keys)}{', ...' if len(payload) > 6 else ''} (another tool's checkpoint?); {AHNET_FILES}"
    return f"a {type(payload).__name__}; {AHNET_FILES}"


def describe_folder(path: Path) -> str:
    if (path / "configs" / "metadata.json").is_file():
        return f"a MONAI bundle folder, not an ahnet checkpoint; {AHNET_FILES}"
    return "a folder, not a checkpoint file"


def bundle_note(path: Path) -> str:
    bundle = path.parent.parent
    return f" (the weights of the MONAI bundle {bundle})" if (bundle / "configs" / "metadata.json").is_file() else ""
