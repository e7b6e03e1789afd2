"""``ahnet export``: a trained checkpoint as a TorchScript or ONNX file for deployment.

The exported model is the network's own forward in evaluation mode (the same modules that trained,
slice-major for AH-Net), traced at one input size: the sliding window's (the training patch by
default), which is the size every call of a sliding-window predictor uses. Inputs are
preprocessed images, ``(N, C, X, Y, Z)`` for 3D networks and ``(N, 3C, X, Y)`` (three neighbouring
slices as channels, §3.1) for 2D ones; outputs are the network's raw maps (logits or heatmap).
Every export is checked: the file is loaded back and run on a fresh input, and it must give the
checkpoint's outputs within ``TOLERANCE``, or no file is left behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import torch

from .errors import AhnetError, ConfigError
from .models.factory import MODEL_DIMS, model_from_meta
from .training.checkpoint import load_checkpoint, load_model_state

FORMATS = ("torchscript", "onnx")
#: Largest difference allowed between the exported model and the checkpoint, relative to the
#: outputs' largest magnitude.
TOLERANCE = 1e-4


class ExportError(AhnetError, RuntimeError):
    """The exported model could not be written or does not reproduce the checkpoint."""


def export_model(checkpoint: str | Path, fmt: str, out: str | Path, size: Sequence[int] | None = None,
                 batch: int = 1) -> dict:
    """Write ``checkpoint``'s network to ``out`` as ``fmt`` (``torchscript`` or ``onnx``).

    ``size``: the input's spatial size (default: the training patch, X and Y of it for 2D
    networks); ``batch``: windows per call. Returns the input shape, the file and the largest
    relative difference to the checkpoint measured on a fresh input.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {batch}")
    saved = load_checkpoint(checkpoint, kind="train")
    meta = saved["model_meta"]
    model = model_from_meta(meta)
    load_model_state(model, saved["model"], checkpoint)
    model.eval()
    dims = MODEL_DIMS[meta["model"]]
    size = tuple(int(s) for s in (size or saved["config"]["patch"]))[:dims]
    if len(size) != dims or min(size) < 1:
        raise ConfigError(f"--size needs {dims} positive sizes for a {meta['model']} network, got {size}")
    channels = meta["image_channels"] * (3 if dims == 2 else 1)
    shape = (batch, channels, *size)
    gen = torch.Generator().manual_seed(0)
    example, check = (torch.randn(shape, generator=gen) for _ in range(2))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        with torch.no_grad():
            expected = model(check)
            run = _torchscript(model, example, tmp) if fmt == "torchscript" else _onnx(model, example, tmp)
            got = run(check)
        error = ((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()
        if not error <= TOLERANCE:
            raise ExportError(f"the exported model differs from the checkpoint by {error:.2e} (relative; "
                              f"allowed {TOLERANCE:g}); nothing written")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"format": fmt, "file": str(out), "input_shape": list(shape), "output_shape": list(expected.shape),
            "max_relative_difference": error, "network": meta["model"]}


def _torchscript(model: torch.nn.Module, example: torch.Tensor, path: str):
    with warnings.catch_warnings():  # shape-dependent Python branches: fixed at the traced size, as documented
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
    traced.save(path)
    return torch.jit.load(path)


def _onnx(model: torch.nn.Module, example: torch.Tensor, path: str):
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as err:
        raise ConfigError(f"ONNX export needs onnx, onnxscript and onnxruntime ({err.name} is missing): "
                          "pip install 'ahnet[export]'") from None
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            torch.onnx.export(model, (example,), path, dynamo=True, input_names=["image"], output_names=["output"])
    except Exception as err:  # the exporter's own message, without its page of traceback
        raise ExportError(f"torch.onnx.export failed: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
