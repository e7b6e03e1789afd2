"""Any-size inputs: pad up to the size a network's down-sampling needs, then crop the output back.

Encoder-decoder networks halve the spatial size several times and add skip connections, so each
axis must be divisible by the total down-sampling factor. Instead of failing deep inside
``forward`` (as the authors' code and MONAI's port do on 96x96x32 or 48x48x32), ahnet pads the input
with zeros to the next multiple, runs the network, and crops the output to the input's size.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import InputShapeError


def padded_size(size: Sequence[int], multiple: Sequence[int]) -> tuple[int, ...]:
    """The smallest size >= ``size`` whose every axis is a multiple of ``multiple``."""
    return tuple(-(-s // m) * m for s, m in zip(size, multiple))


def check_input(x: torch.Tensor, spatial_dims: int, in_channels: int, network: str) -> None:
    """Raise a clear :class:`InputShapeError` unless ``x`` is ``(N, in_channels, *spatial)``."""
    layout = "(N, C, X, Y)" if spatial_dims == 2 else "(N, C, X, Y, Z)"
    if not isinstance(x, torch.Tensor):
        raise InputShapeError(f"{network} expects a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != spatial_dims + 2:
        raise InputShapeError(
            f"{network} expects a {spatial_dims + 2}D tensor {layout}, got shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise InputShapeError(
            f"{network} was built for {in_channels} input channel(s) but got {x.shape[1]} "
            f"(shape {tuple(x.shape)}, layout {layout})"
        )
    if not x.is_floating_point():
        raise InputShapeError(f"{network} expects a floating-point tensor, got {x.dtype}")
    if min(x.shape[2:]) < 1 or x.shape[0] < 1:
        raise InputShapeError(f"{network} got an empty tensor of shape {tuple(x.shape)}")


def pad_to_multiple(x: torch.Tensor, multiple: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the spatial axes of ``x`` (split evenly before and after) to ``multiple``.

    Returns the padded tensor and the slices that crop an output of the padded size back to ``x``'s.
    """
    size = tuple(x.shape[2:])
    target = padded_size(size, multiple)
    if target == size:
        return x, tuple(slice(None) for _ in size)
    before = [(t - s) // 2 for s, t in zip(size, target)]
    after = [t - s - b for s, t, b in zip(size, target, before)]
    pads: list[int] = []
    for b, a in zip(reversed(before), reversed(after)):  # F.pad lists the last axis first
        pads += [b, a]
    crop = tuple(slice(b, b + s) for b, s in zip(before, size))
    return F.pad(x, pads), crop


def crop_spatial(y: torch.Tensor, crop: tuple[slice, ...]) -> torch.Tensor:
    """Apply the crop returned by :func:`pad_to_multiple` to an output ``(N, C, *spatial)``."""
    return y[(slice(None), slice(None), *crop)]
