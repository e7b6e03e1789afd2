"""The slice-major memory layout in which AH-Net trains and predicts fast (§3.2-3.3, Table 3).

AH-Net's kernels are anisotropic: 3x3x1 and 1x1x1 convolve each slice alone, 1x1x3 only mixes
neighbouring slices. A ``(N, C, X, Y, Z)`` tensor whose memory is ordered ``(N, Z, X, Y, C)`` is
therefore, without a copy, both

* a batch of slices ``(N*Z, C, X, Y)`` in channels-last memory (:func:`slices`), on which the
  in-plane convolutions run as 2D convolutions, and
* ``(N, C, Z, X*Y)``, again channels-last (:func:`zview`), on which 1x1xk convolutions and z
  pooling run as ``(k, 1)`` 2D operations.

oneDNN (CPU) and cuDNN (GPU) tune these 2D kernels far better than the 3D ones, forward and
backward, and autograd differentiates through the views. Tensors keep their logical
``(N, C, X, Y, Z)`` shape, so a module written for 5D tensors works on both layouts; the helpers
here run the operations whose 3D kernels would silently copy the tensor back to the ordinary
layout (concatenation, resizing, pooling). On an ordinary tensor every helper is the plain 3D
operation, which is how the tests compare the two routes.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _triple

CL = torch.channels_last


def to_slice_major(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, X, Y, Z) with its memory reordered to (N, Z, X, Y, C); same values and shape."""
    return x.permute(0, 4, 2, 3, 1).contiguous().permute(0, 4, 2, 3, 1)


def is_slice_major(x: torch.Tensor) -> bool:
    """Whether ``x`` is 5D with memory ordered (N, Z, X, Y, C) without gaps, so that
    :func:`slices` and :func:`zview` are views."""
    if x.dim() != 5:
        return False
    n, c, sx, sy, sz = x.shape
    want = (sz * sx * sy * c, 1, sy * c, c, sx * sy * c)
    return all(size == 1 or stride == w for size, stride, w in zip(x.shape, x.stride(), want))


def slices(x: torch.Tensor) -> torch.Tensor:
    """A slice-major ``(N, C, X, Y, Z)`` tensor as the batch of slices ``(N*Z, C, X, Y)``."""
    n, c, sx, sy, sz = x.shape
    return x.permute(0, 4, 1, 2, 3).reshape(n * sz, c, sx, sy)


def from_slices(y: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`slices` for ``n`` volumes."""
    b, c, sx, sy = y.shape
    return y.reshape(n, b // n, c, sx, sy).permute(0, 2, 3, 4, 1)


def zview(x: torch.Tensor) -> torch.Tensor:
    """A slice-major ``(N, C, X, Y, Z)`` tensor as ``(N, C, Z, X*Y)``: z is a 2D map's height."""
    n, c, sx, sy, sz = x.shape
    return x.permute(0, 1, 4, 2, 3).reshape(n, c, sz, sx * sy)


def from_zview(y: torch.Tensor, sx: int, sy: int) -> torch.Tensor:
    """Inverse of :func:`zview` for an in-plane size ``(sx, sy)``."""
    n, c, sz, _ = y.shape
    return y.reshape(n, c, sz, sx, sy).permute(0, 1, 3, 4, 2)


def _channels_last(y: torch.Tensor) -> torch.Tensor:
    """2D kernels give channels-last outputs for channels-last inputs; this makes sure of it
    (a copy only where a kernel chose otherwise, e.g. a map of one pixel)."""
    return y.contiguous(memory_format=CL)


def cat_channels(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(tensors, dim=1)`` that keeps slice-major tensors slice-major (5D
    concatenation would return the ordinary layout)."""
    if all(is_slice_major(t) for t in tensors):
        n = tensors[0].shape[0]
        return from_slices(_channels_last(torch.cat([slices(t) for t in tensors], dim=1)), n)
    return torch.cat(list(tensors), dim=1)


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Trilinear resizing (``align_corners=False``) to ``size``; on slice-major tensors split by
    axis (bilinear in-plane, then linear along z, each a 2D kernel on a view), which is the same
    interpolation since trilinear weights are products of per-axis weights."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    if not is_slice_major(x):
        return F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    n = x.shape[0]
    if tuple(x.shape[2:4]) != size[:2]:
        x = from_slices(_channels_last(F.interpolate(slices(x), size=size[:2], mode="bilinear",
                                                     align_corners=False)), n)
    if x.shape[4] != size[2]:
        sx, sy = size[:2]
        x = from_zview(_channels_last(F.interpolate(zview(x), size=(size[2], sx * sy), mode="bilinear",
                                                    align_corners=False)), sx, sy)
    return x


def max_pool(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int] = (0, 0, 0),
             ceil_mode: bool = False) -> torch.Tensor:
    """``F.max_pool3d``; on slice-major tensors in-plane first (k*k fewer values to pool along z),
    then along z, each a 2D kernel on a view: the maximum over a box is the maximum over its rows
    of the maxima over its slices, padding (minus infinity) included."""
    kernel, stride, padding = (tuple(int(v) for v in t) for t in (kernel, stride, padding))
    if not is_slice_major(x):
        return F.max_pool3d(x, kernel, stride, padding, ceil_mode=ceil_mode)
    n = x.shape[0]
    if kernel[:2] != (1, 1) or stride[:2] != (1, 1):
        x = from_slices(_channels_last(F.max_pool2d(slices(x), kernel[:2], stride[:2], padding[:2],
                                                    ceil_mode=ceil_mode)), n)
    if kernel[2] != 1 or stride[2] != 1:
        sx, sy = x.shape[2:4]
        x = from_zview(_channels_last(F.max_pool2d(zview(x), (kernel[2], 1), (stride[2], 1), (padding[2], 0),
                                                   ceil_mode=ceil_mode)), sx, sy)
    return x


def _conv2d_in_plane(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """A ``(kx, ky, 1)`` convolution as a 2D convolution of every slice."""
    y = F.conv2d(slices(x), conv.weight[..., 0], conv.bias, conv.stride[:2], conv.padding[:2], conv.dilation[:2],
                 conv.groups)
    return from_slices(_channels_last(y), x.shape[0])


def _conv2d_through_plane(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """A ``(1, 1, kz)`` convolution as a ``(kz, 1)`` 2D convolution of :func:`zview`."""
    out, per_group, _, _, kz = conv.weight.shape
    y = F.conv2d(zview(x), conv.weight.view(out, per_group, kz, 1), conv.bias, (conv.stride[2], 1),
                 (conv.padding[2], 0), (conv.dilation[2], 1), conv.groups)
    return from_zview(_channels_last(y), x.shape[2], x.shape[3])


def _conv2d_stacked(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """A ``(kx, ky, kz)`` convolution with z stride 1 as a 2D convolution over stacks of ``kz``
    neighbouring slices, each slice's channels followed by the next's (as MC-GCN's 3-slice input,
    §3.1, and the stem's 7x7x3 kernel, §3.2.2)."""
    out, cin, kx, ky, kz = conv.weight.shape
    n, _, sx, sy, _ = x.shape
    padded = F.pad(zview(x), (0, 0, conv.padding[2], conv.padding[2]))
    windows = padded.unfold(2, kz, 1)                                      # (N, C, Z', X*Y, kz)
    z_out = windows.shape[2]
    stacks = windows.permute(0, 2, 3, 1, 4).reshape(n * z_out, sx, sy, cin * kz).permute(0, 3, 1, 2)
    weight = conv.weight.permute(0, 1, 4, 2, 3).reshape(out, cin * kz, kx, ky)
    y = F.conv2d(stacks, weight, conv.bias, conv.stride[:2], conv.padding[:2], conv.dilation[:2])
    return from_slices(_channels_last(y), n)


class SliceConv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters, same state-dict keys) that runs a slice-major input as 2D
    convolutions: in-plane kernels over the batch of slices, 1x1xk kernels along z, other kernels
    with a z stride of 1 over stacks of slices. Anything else (an ordinary tensor, groups with a
    through-plane kernel, dilation or padding modes along z) is the plain 3D convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_slice_major(x) or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super().forward(x)
        (kx, ky, kz), (stx, sty, stz), (px, py, pz) = self.kernel_size, self.stride, self.padding
        if kz == 1 and stz == 1 and pz == 0:
            return _conv2d_in_plane(self, x)
        if (kx, ky, stx, sty, px, py) == (1, 1, 1, 1, 0, 0):
            return _conv2d_through_plane(self, x)
        if stz == 1 and self.dilation[2] == 1 and self.groups == 1:
            return _conv2d_stacked(self, x)
        return to_slice_major(super().forward(x))


class SliceBatchNorm3d(nn.BatchNorm3d):
    """``nn.BatchNorm3d`` (same state) that normalises a slice-major input as its batch of slices:
    the statistics are over the same N*X*Y*Z values per channel."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (4, 5):
            raise ValueError(f"expected a 5D input (or its 4D batch of slices), got {input.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_slice_major(x):
            return super().forward(x)
        return from_slices(_channels_last(super().forward(slices(x))), x.shape[0])


class SliceMaxPool3d(nn.MaxPool3d):
    """``nn.MaxPool3d`` that pools a slice-major input with :func:`max_pool`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.return_indices or _triple(self.dilation) != (1, 1, 1):
            return super().forward(x)
        return max_pool(x, _triple(self.kernel_size), _triple(self.stride or self.kernel_size),
                        _triple(self.padding), self.ceil_mode)
