"""Fast, eval-only inference with the same outputs as the plain modules (Table 3).

AH-Net's encoder and decoder kernels are anisotropic (§3.2-3.3): 3x3x1 and 1x1x1 convolve each
slice alone, 1x1x3 only mixes neighbouring slices. :class:`FastAHNet` therefore keeps features as a
batch of slices ``(N*Z, C, X, Y)`` in channels-last memory and runs 2D convolutions, which oneDNN
(CPU) and cuDNN (GPU) tune far better than 3D ones. Read as ``(N, C, Z, X*Y)``, the same memory is
again a channels-last 2D map, so 1x1x3 convolutions, z max pooling and z interpolation are 2D ops
on a view, without copies. The stem's 7x7x3 becomes a 7x7 convolution over 3-slice stacks, as in
MC-GCN (§3.1).

Memory is the other half of the time on a CPU. Batch norms that directly follow a convolution are
folded into it; dense blocks (§3.3) write into one buffer instead of concatenating; every stage runs
a few slices at a time, so temporaries stay small; and the large tensors (encoder
outputs, dense-block buffers) come from an arena kept between calls, because touching freshly
allocated pages cost about a quarter of a forward at 384x256x64.

Other networks (MC-GCN, U-Nets) get the cheap part: folded batch norms and channels-last memory.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .ahnet import (AHBasicBlock, AHBottleneck, AHNet, AnisotropicDenseLayer, DecoderLevel, Pseudo3DDenseLayer,
                    PyramidVolumetricPooling)
from .padding import check_input, crop_spatial, pad_to_multiple
from .resnet import TAP_NAMES, BasicBlock, Bottleneck, ResNet

CL = torch.channels_last
#: Elements a chunk of slices may hold on CPU: 16 MB of float32. Smaller chunks fit the cache no
#: better in practice and mean more, shorter parallel regions (each waits for every thread: slow
#: on a shared machine); larger ones exceed glibc's 32 MB limit for reusing freed memory.
CPU_CHUNK_ELEMENTS = 1 << 22
Norm = nn.modules.batchnorm._BatchNorm
Take = Callable[[tuple[int, ...], torch.Tensor], torch.Tensor]


class NotCovered(ValueError):
    """A module the fast path has no fast form for: :func:`optimize_for_inference` then keeps the
    network's own (slice-major) forward, with the same outputs."""

Chunked = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _affine(bn: Norm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm as ``scale * x + shift`` per channel."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias.detach() - bn.running_mean * scale


def _zview(x: torch.Tensor, n: int) -> torch.Tensor:
    """Slices ``(N*Z, C, X, Y)`` (channels-last) as the same memory read ``(N, C, Z, X*Y)``."""
    b, c, sx, sy = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, b // n, sx * sy, c).permute(0, 3, 1, 2)


def _slices(v: torch.Tensor, sx: int, sy: int) -> torch.Tensor:
    """Inverse of :func:`_zview`."""
    n, c, sz, _ = v.shape
    return v.permute(0, 2, 3, 1).reshape(n * sz, sx, sy, c).permute(0, 3, 1, 2)


def _zpool(x: torch.Tensor, k: int) -> torch.Tensor:
    """MaxPool (1, 1, k)/(1, 1, k) over consecutive groups of ``k`` slices (z is a multiple of k),
    as element-wise maxima: pooling kernels would also write indices, twice the output traffic."""
    v = x.view(x.shape[0] // k, k, *x.shape[1:])
    out = v[:, 0]
    for i in range(1, k):
        out = torch.maximum(out, v[:, i])
    return out


def _zmax_pool(x: torch.Tensor, n: int, k: int, s: int, p: int, take: Take) -> torch.Tensor:
    """MaxPool (1, 1, k)/(1, 1, s), padding ``p``, over the slices of each of ``n`` volumes, as
    element-wise maxima of strided views of the slice batch: the pooling kernel, which also writes
    indices, took 5x longer on the stem's output."""
    sz = x.shape[0] // n
    out_z = (sz + 2 * p - k) // s + 1
    out = take((n * out_z, *x.shape[1:]), x)
    for v in range(n):
        src, dst = x[v * sz:(v + 1) * sz], out[v * out_z:(v + 1) * out_z].fill_(float("-inf"))
        for i in range(k):  # output j reads input j*s - p + i where that is inside the volume
            lo, hi = max(0, -((i - p) // s)), min(out_z, (sz - 1 + p - i) // s + 1)
            if hi > lo:
                view = src[lo * s - p + i:(hi - 1) * s - p + i + 1:s]
                torch.maximum(dst[lo:hi], view, out=dst[lo:hi])
    return out


def _resize_z(x: torch.Tensor, n: int, sz: int, rows: slice) -> torch.Tensor:
    """Rows ``rows`` of ``x`` (``n`` volumes of slices) resized linearly along z to ``sz`` slices a
    volume, as ``F.interpolate`` does (``align_corners=False``): each output slice blends its two
    source slices, so the resized volume is made a chunk at a time. With :func:`_resize_xy` this is
    trilinear resizing split by axis; an axis already of the right size is left alone, as trilinear
    resizing leaves it."""
    sz_in = x.shape[0] // n
    if sz_in == sz:
        return x[rows]
    j = torch.arange(rows.start, rows.stop, device=x.device)
    volume, k = j // sz, j % sz
    source = ((k + 0.5) * (sz_in / sz) - 0.5).clamp_min(0).float()
    lo = source.floor().long()
    hi = torch.clamp(lo + 1, max=sz_in - 1)
    weight = (source - lo).to(x.dtype).view(-1, 1, 1, 1)
    below, above = x[volume * sz_in + lo], x[volume * sz_in + hi]
    return torch.lerp(below, above, weight).contiguous(memory_format=CL)


def _resize_xy(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Bilinear in-plane resizing (``align_corners=False``) of every slice."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _chunks(slices: int, elements_per_slice: int, budget: int | None, multiple: int = 1) -> Iterator[slice]:
    """Ranges of slices of at most ``budget`` elements (all when ``budget`` is None), each a
    multiple of ``multiple`` slices."""
    step = slices if budget is None else max(1, budget // max(1, elements_per_slice * multiple)) * multiple
    for start in range(0, slices, step):
        yield slice(start, min(start + step, slices))


def _per_slice(fn: Chunked, x: torch.Tensor, take: Take, budget: int | None, per_slice: int,
               multiple: int = 1) -> torch.Tensor:
    """``fn`` over ``x`` a chunk at a time, into a tensor from ``take``. ``fn(chunk, out)`` treats
    slices, or groups of ``multiple`` slices that become one, alone, and writes its result into
    ``out`` (None for the first chunk, whose result sets the shape); ``per_slice``: its temporaries
    per input slice."""
    out = None
    for part in _chunks(x.shape[0], per_slice, budget, multiple):
        rows = slice(part.start // multiple, part.stop // multiple)
        if out is None:
            y = fn(x[part], None)
            out = take((x.shape[0] // multiple, *y.shape[1:]), y)
            out[rows] = y
        else:
            fn(x[part], out[rows])
    return out


def _into(y: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """``y``, copied into ``out`` when given (results without an ``out=`` variant)."""
    return y if out is None else out.copy_(y)


class _Arena:
    """Reuses the fast path's large tensors within a call and from one call to the next.

    A fresh tensor of many megabytes costs a page fault per 4 kB the first time it is written. Sliding
    windows all have one size, so from the second call on every large tensor reuses a kept block.
    """

    def __init__(self) -> None:
        self.free: list[torch.Tensor] = []
        self.lent: dict[int, torch.Tensor] = {}

    def take(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised channels-last tensor of ``like``'s dtype and device."""
        n, c, sx, sy = shape
        size = n * c * sx * sy * like.element_size()
        fits = [b for b in self.free if b.numel() >= size and b.device == like.device]
        block = min(fits, key=lambda b: b.numel()) if fits else torch.empty(size, dtype=torch.uint8,
                                                                             device=like.device)
        self.free = [b for b in self.free if b is not block]
        t = block[:size].view(like.dtype).view(n, sx, sy, c).permute(0, 3, 1, 2)
        self.lent[t.data_ptr()] = block
        return t

    def give(self, *tensors: torch.Tensor) -> None:
        """Hand tensors from :meth:`take` back once no longer read (others are ignored)."""
        for t in tensors:
            block = self.lent.pop(t.data_ptr(), None)
            if block is not None:
                self.free.append(block)

    def reset(self) -> None:
        self.free += self.lent.values()
        self.lent.clear()


class _BNReLU(nn.Module):
    """Pre-activation BatchNorm-ReLU (the decoder's, §3.3) as one multiply-add into a new tensor."""

    def __init__(self, bn: Norm):
        super().__init__()
        scale, shift = _affine(bn)
        self.register_buffer("scale", scale.view(1, -1, 1, 1))
        self.register_buffer("shift", shift.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.addcmul(self.shift.to(x.dtype), x, self.scale.to(x.dtype), out=out).relu_()


class _Clamp(nn.Module):
    """Pre-activation BatchNorm-ReLU whose affine part went into the following 1x1 convolution
    (:func:`_preactivation`): one clamp with per-channel bounds, one pass over the maps."""

    def __init__(self, low: torch.Tensor, high: torch.Tensor):
        super().__init__()
        self.register_buffer("low", low.view(1, -1, 1, 1))
        self.register_buffer("high", high.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.clamp(x, self.low.to(x.dtype), self.high.to(x.dtype), out=out)


def _preactivation(bn: Norm, conv: "_Conv | _TapConv") -> nn.Module:
    """BN-ReLU before ``conv`` (the decoder's order, §3.3), as cheap as the kernel allows.

    Before a 1x1 convolution: with the norm as ``s * x + b`` per channel,
    ``relu(s * x + b) = s * max(x, -b/s) + b`` where ``s > 0`` and ``s * min(x, -b/s) + b`` where
    ``s < 0``, so ``s`` goes into the convolution's weights, ``b`` into its bias (a 1x1
    convolution has no padding that would see it), and the maps need one clamp instead of a
    multiply-add and a ReLU: 35 % less time on them. A channel with ``s = 0`` is the constant
    ``relu(b)``, which goes into the bias. :class:`_TapConv` qualifies (its taps are 1x1 convs);
    any other kernel keeps :class:`_BNReLU`: its zero padding stands for norm outputs of 0, to
    which a folded bias would wrongly add ``b``.
    """
    if tuple(conv.weight.shape[2:]) != (1, 1):
        return _BNReLU(bn)
    scale, shift = (t.double() for t in _affine(bn))
    live = scale != 0
    weight, bias = conv.weight.double(), conv.bias
    const = torch.where(live, shift, shift.clamp_min(0))
    folded_bias = weight[:, :, 0, 0] @ const + (0 if bias is None else bias.double())
    conv.weight = (weight * torch.where(live, scale, 0).view(1, -1, 1, 1)).to(conv.weight.dtype).contiguous(
        memory_format=CL)
    conv.bias = folded_bias.to(conv.weight.dtype)
    bound = torch.where(live, -shift / torch.where(live, scale, 1), 0)
    inf = torch.full_like(bound, float("inf"))
    return _Clamp(torch.where(scale > 0, bound, -inf).float(), torch.where(scale < 0, bound, inf).float())


def _folded(conv: nn.Conv3d, weight: torch.Tensor, bn: Norm | None,
            extra_shift: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``weight`` (the conv's, reshaped for 2D) and bias with a following norm folded in."""
    bias = None if conv.bias is None else conv.bias.detach()
    if bn is not None:
        scale, shift = _affine(bn)
        weight = weight * scale.view(-1, 1, 1, 1)
        bias = shift if bias is None else bias * scale + shift
    if extra_shift is not None:
        bias = extra_shift if bias is None else bias + extra_shift
    return weight.contiguous(memory_format=CL), bias


class _Conv(nn.Module):
    """A ``(kx, ky, 1)`` Conv3d as a Conv2d over slices, with a following BatchNorm folded in."""

    def __init__(self, conv: nn.Conv3d, bn: Norm | None = None, extra_shift: torch.Tensor | None = None):
        super().__init__()
        if conv.kernel_size[2] != 1 or conv.stride[2] != 1 or conv.groups != 1:
            raise NotCovered(f"{conv} is not an in-plane convolution")
        weight, bias = _folded(conv, conv.weight.detach()[..., 0], bn, extra_shift)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.stride, self.padding = conv.stride[:2], conv.padding[:2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


class _TapConv(nn.Module):
    """A kxk Conv3d (kx, ky, 1) with few outputs (the released head: one heatmap or a few classes)
    as a 1x1 conv to one set of outputs per tap, summed shifted. oneDNN's kxk kernels vectorise over
    output channels and ran at ~6 GFLOP/s with one; a 1x1 conv is a matrix product. ``weight`` and
    ``bias`` are that 1x1 conv's (a preceding norm folds into them: taps outside the map are never
    summed, so the padding sees no bias); ``out_bias`` is the kxk conv's own."""

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        if conv.kernel_size[2] != 1 or conv.stride != (1, 1, 1) or conv.groups != 1:
            raise NotCovered(f"{conv} is not a stride-1 in-plane convolution")
        out, cin, kx, ky, _ = conv.weight.shape
        w = conv.weight.detach()[..., 0].permute(2, 3, 0, 1).reshape(kx * ky * out, cin, 1, 1)
        self.register_buffer("weight", w.contiguous(memory_format=CL))
        self.register_buffer("bias", None)
        self.register_buffer("out_bias", None if conv.bias is None else conv.bias.detach().view(1, -1, 1, 1))
        self.kernel, self.padding = (kx, ky), conv.padding[:2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps = F.conv2d(x, self.weight, self.bias)
        (kx, ky), (px, py) = self.kernel, self.padding
        k, (sx, sy) = taps.shape[1] // (kx * ky), taps.shape[2:]
        ox, oy = sx + 2 * px - kx + 1, sy + 2 * py - ky + 1
        out = taps.new_zeros((taps.shape[0], k, ox, oy))
        for i in range(kx):
            for j in range(ky):  # out[x, y] += tap(i, j)[x + i - px, y + j - py] where inside
                x0, x1, y0, y1 = max(0, px - i), min(ox, sx + px - i), max(0, py - j), min(oy, sy + py - j)
                tap = taps[:, (i * ky + j) * k:(i * ky + j + 1) * k]
                out[:, :, x0:x1, y0:y1] += tap[:, :, x0 + i - px:x1 + i - px, y0 + j - py:y1 + j - py]
        return out if self.out_bias is None else out.add_(self.out_bias.to(out.dtype))


class _ZConv(nn.Module):
    """A ``(1, 1, k)`` Conv3d ('same' size along z) as a ``(k, 1)`` Conv2d on ``(N, C, Z, X*Y)``."""

    def __init__(self, conv: nn.Conv3d, bn: Norm | None = None):
        super().__init__()
        k = conv.kernel_size[2]
        if conv.kernel_size[:2] != (1, 1) or conv.stride != (1, 1, 1) or conv.padding[2] * 2 + 1 != k:
            raise NotCovered(f"{conv} is not a 'same' through-plane convolution")
        w = conv.weight.detach().reshape(conv.out_channels, conv.in_channels, k, 1)
        weight, bias = _folded(conv, w, bn, None)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.halo = conv.padding[2]

    def forward(self, x: torch.Tensor, zeros: tuple[int, int]) -> torch.Tensor:
        """``x``: consecutive slices of one volume with ``halo`` neighbours each side, except where
        ``zeros`` says how many zero slices stand in for them (the volume's ends)."""
        v = _zview(x, 1)
        if any(zeros):
            v = F.pad(v, (0, 0, *zeros))
        return _slices(F.conv2d(v, self.weight, self.bias), *x.shape[2:])


def _zchunks(n: int, sz: int, per_slice: int, budget: int | None,
             halo: int) -> Iterator[tuple[slice, slice, tuple[int, int]]]:
    """Chunks along z inside each volume: (slices to produce, slices to read: those and ``halo``
    neighbours each side, zero slices needed beyond the volume's ends)."""
    for i in range(n):
        for part in _chunks(sz, per_slice, budget):
            lo, hi = max(part.start - halo, 0), min(part.stop + halo, sz)
            zeros = (halo - (part.start - lo), halo - (hi - part.stop))
            yield slice(i * sz + part.start, i * sz + part.stop), slice(i * sz + lo, i * sz + hi), zeros


def _zfactor(pool: nn.Module | None) -> int:
    return pool.kernel_size[2] if isinstance(pool, nn.MaxPool3d) else 1


class _Stem(nn.Module):
    """Conv 7x7x3/(2,2,1) as a 7x7 Conv2d over 3-slice stacks, MaxPool 1x1x2, BN, ReLU (§3.2.2)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        conv = encoder.conv1
        if conv.stride[2] != 1 or conv.kernel_size[2] != 2 * conv.padding[2] + 1:
            raise NotCovered(f"{conv} is not 'same' along z")
        self.kz, self.pz = conv.kernel_size[2], conv.padding[2]
        w = conv.weight.detach().permute(0, 1, 4, 2, 3)
        w = w.reshape(conv.out_channels, conv.in_channels * self.kz, *conv.kernel_size[:2])
        # Released order: max pooling between conv and norm, so the norm stays (a negative scale
        # would turn max into min); 2D order: the norm folds into the conv.
        self.norm = _BNReLU(encoder.bn1) if encoder.pool_before_norm else None
        weight, bias = _folded(conv, w, None if encoder.pool_before_norm else encoder.bn1, None)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.stride, self.padding = conv.stride[:2], conv.padding[:2]
        self.pool = _zfactor(encoder.pool_z)

    def forward(self, x: torch.Tensor, take: Take, budget: int | None) -> torch.Tensor:
        """The ``conv1`` tap of ``(N, C, X, Y, Z)``, a chunk of slices at a time, each chunk's
        stacks ``(slices, C*kz, X, Y)`` (every slice with its z neighbours as channels) built alone."""
        n, c, sx, sy, sz = x.shape
        xp = F.pad(x, (self.pz, self.pz))
        per = self.weight.shape[0] * sx * sy // (self.stride[0] * self.stride[1])
        out = None
        for i in range(n):
            for part in _chunks(sz, per, budget, self.pool):
                st = xp[i:i + 1, ..., part.start:part.stop + self.kz - 1].unfold(4, self.kz, 1)
                st = st.permute(0, 4, 2, 3, 1, 5).reshape(-1, sx, sy, c * self.kz).permute(0, 3, 1, 2)
                rows = slice((i * sz + part.start) // self.pool, (i * sz + part.stop) // self.pool)
                if out is None:
                    y = self._run(st, None)
                    out = take((n * sz // self.pool, *y.shape[1:]), y)
                    out[rows] = y
                else:
                    self._run(st, out[rows])
        return out

    def _run(self, st: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        y = _zpool(F.conv2d(st, self.weight, self.bias, self.stride, self.padding), self.pool)
        return torch.clamp_min(y, 0, out=out) if self.norm is None else self.norm(y, out)


class _Block(nn.Module):
    """AH-ResNet bottleneck or basic block (Fig. 3) with folded norms.

    The AH-Downsample's norm comes after its max pooling, so only its shift is folded (into the
    main branch's last conv: pooling commutes with adding a constant); its scale is applied in the
    residual sum.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        ds = block.downsample
        scale, shift = _affine(ds.bn) if ds is not None else (None, None)
        if isinstance(block, AHBottleneck):
            convs = [_Conv(block.conv1, block.bn1), _Conv(block.conv2, block.bn2),
                     _Conv(block.conv3, block.bn3, shift)]
        elif isinstance(block, AHBasicBlock):
            convs = [_Conv(block.conv1, block.bn1), _Conv(block.conv2, block.bn2, shift)]
        else:
            raise NotCovered(f"not an AH-ResNet block: {type(block).__name__}")
        self.convs = nn.ModuleList(convs)
        self.pool = _zfactor(block.pool_z)
        self.down = None if ds is None else _Conv(ds.conv)
        self.register_buffer("down_scale", None if scale is None else scale.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        h = x
        for conv in self.convs[:-1]:
            h = conv(h).relu_()
        h = _zpool(self.convs[-1](h), self.pool)
        if self.down is None:
            return torch.add(h, x, out=out).relu_()
        identity = _zpool(self.down(x), self.pool)
        return torch.addcmul(h, identity, self.down_scale.to(h.dtype), out=out).relu_()


class _Stage(nn.Module):
    """A residual stage (layer1-4); every block is per slice or per pooled pair, so it runs in chunks."""

    def __init__(self, layer: nn.Sequential):
        super().__init__()
        self.blocks = nn.ModuleList(_Block(b) for b in layer)
        self.pool = 1
        for b in self.blocks:
            self.pool *= b.pool

    def run(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        for block in self.blocks[:-1]:
            x = block(x)
        return self.blocks[-1](x, out)


class _DenseLayer(nn.Module):
    """One dense layer (§3.3), either kind, writing its ``growth`` maps into the block's buffer.

    The in-plane part runs per slice; the through-plane part in chunks along z with one neighbour
    slice read on each side.
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        if not isinstance(layer, (AnisotropicDenseLayer, Pseudo3DDenseLayer)):
            raise NotCovered(f"no fast form of {type(layer).__name__}")
        self.anisotropic = isinstance(layer, AnisotropicDenseLayer)
        if self.anisotropic:  # xy: 1x1x1-3x3x1-1x1x1, z: 1x1x1-1x1x3-1x1x1, each BN-ReLU-conv
            (a, b, c), (d, e, f) = layer.xy, layer.z
            self.xy = nn.ModuleList([_Conv(a.conv, b.norm), _Conv(b.conv, c.norm), _Conv(c.conv)])
            self.z_in, self.z, self.z_out = _Conv(d.conv, e.norm), _ZConv(e.conv, f.norm), _Conv(f.conv)
            self.head_norm, self.z_norm = _preactivation(a.norm, self.xy[0]), _preactivation(d.norm, self.z_in)
        else:  # released: reduce 1x1x1, xy 3x3x1, z 1x1x3 on it, summed, mix 1x1x1
            self.xy = nn.ModuleList([_Conv(layer.reduce.conv, layer.xy.norm), _Conv(layer.xy.conv)])
            self.z, self.mix = _ZConv(layer.z.conv), _Conv(layer.mix.conv)
            self.head_norm, self.z_norm = _preactivation(layer.reduce.norm, self.xy[0]), _BNReLU(layer.z.norm)
            self.mix_norm = _preactivation(layer.mix.norm, self.mix)
        self.growth = self.xy[-1].weight.shape[0]

    def _xy(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        h = self.head_norm(x)
        for conv in self.xy[:-1]:
            h = conv(h).relu_()
        return _into(self.xy[-1](h), out)

    def _z_in(self, h: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        """Everything before the 1x1x3 convolution; per slice."""
        if self.anisotropic:
            return _into(self.z_in(self.z_norm(h)).relu_(), out)
        return self.z_norm(h, out)

    def _z_out(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """From the 1x1x3 convolution's output ``z`` to the layer's ``growth`` maps."""
        if self.anisotropic:
            return self.z_out(z.relu_()).add_(h)
        return self.mix(self.mix_norm(z.add_(h)))

    def forward(self, buf: torch.Tensor, scratch: tuple[torch.Tensor, torch.Tensor], start: int, stop: int,
                n: int, budget: int | None) -> None:
        """Read ``buf[:, start:stop]``, write ``buf[:, stop:stop+growth]``; ``scratch``: two tensors
        of ``growth`` maps. The through-plane part reads its neighbour slices from the full map."""
        x = buf[:, start:stop]
        h = _per_slice(self._xy, x, lambda shape, like: scratch[0], budget, x[0].numel())
        z_in = _per_slice(self._z_in, h, lambda shape, like: scratch[1], budget, 2 * h[0].numel())
        out = buf[:, stop:stop + self.growth]
        for part, ext, zeros in _zchunks(n, x.shape[0] // n, 4 * h[0].numel(), budget, self.z.halo):
            out[part] = self._z_out(self.z(z_in[ext], zeros), h[part])


class _Level(nn.Module):
    """Decoder level (§3.3): project, up-sample, add the skip, dense block, in one buffer whose
    first ``front`` channels are left for the pyramid's maps."""

    def __init__(self, level: DecoderLevel, front: int):
        super().__init__()
        self.project = _Conv(level.project.conv)
        self.norm = _preactivation(level.project.norm, self.project)
        self.layers = nn.ModuleList(_DenseLayer(layer) for layer in level.dense)
        self.front, self.out_channels = front, level.dense.out_channels

    def forward(self, h: torch.Tensor, skip: torch.Tensor, n: int, budget: int | None, arena: _Arena) -> torch.Tensor:
        size, rows = skip.shape[2:], skip.shape[0]
        # 1x1x1 first (fewer maps to resize), a chunk of slices at a time, then resized and summed
        # with the skip a chunk of output slices at a time.
        p = _per_slice(lambda t, out: _into(self.project(self.norm(t)), out), h, arena.take, budget,
                       2 * h[0].numel())
        arena.give(h)
        buf = arena.take((rows, self.front + self.out_channels, *size), skip)
        c = self.front + skip.shape[1]
        for part in _chunks(rows, skip[0].numel(), budget):
            torch.add(_resize_xy(_resize_z(p, n, rows // n, part), size), skip[part], out=buf[part, self.front:c])
        arena.give(p, skip)  # read for the last time: their memory serves the scratch maps below
        scratch = tuple(arena.take((skip.shape[0], self.layers[0].growth, *size), skip) for _ in range(2))
        for layer in self.layers:
            layer(buf, scratch, self.front, c, n, budget)
            c += layer.growth
        arena.give(*scratch)
        return buf


class _Pyramid(nn.Module):
    """Pyramid volumetric pooling (§3.3) into the buffer's front channels.

    Max pooling with kernel k is taken from the map already pooled with the largest kernel dividing
    k (exact, ceil mode included), so the full-size map is read once, a chunk at a time.
    """

    def __init__(self, pyramid: PyramidVolumetricPooling):
        super().__init__()
        self.pools = pyramid.pools
        self.proj = nn.ModuleList(_Conv(p) for p in pyramid.proj)

    def forward(self, buf: torch.Tensor, budget: int | None) -> None:
        front = len(self.pools)
        if not front:
            return
        # The whole buffer is pooled, a dense chunk at a time: its front channels (not written yet)
        # are pooled along and dropped, which costs less than copying the rest out of the buffer.
        pooled = {1: buf}
        for k in sorted(set(self.pools)):
            src = max(j for j in pooled if k % j == 0)
            if src == 1:
                pooled[k] = torch.cat([F.max_pool2d(buf[part], k, k, ceil_mode=True)
                                       for part in _chunks(buf.shape[0], buf[0].numel(), budget)])
            else:
                pooled[k] = F.max_pool2d(pooled[src], k // src, k // src, ceil_mode=True)
        maps = [_resize_xy(proj(pooled[k][:, front:]), buf.shape[2:]) for k, proj in zip(self.pools, self.proj)]
        for part in _chunks(buf.shape[0], buf[0].numel(), budget):  # the front channels share cache lines
            torch.cat([m[part] for m in maps], dim=1, out=buf[part, :front])


class FastAHNet(nn.Module):
    """Eval-only AH-Net (§3.2-3.3) equal to the given :class:`AHNet` within float rounding.

    Built from a model's weights (copied, batch norms folded); the model itself is left untouched.
    Takes and returns the same ``(N, C, X, Y, Z)`` tensors as :class:`AHNet`. Keeps its large work
    tensors between calls (one call at a time per instance).
    """

    def __init__(self, model: AHNet):
        super().__init__()
        enc = model.encoder
        self.in_channels, self.out_channels = model.in_channels, model.out_channels
        self.size_multiple = model.size_multiple
        self.stem = _Stem(enc)
        self.maxpool = (enc.maxpool.kernel_size, enc.maxpool.stride, enc.maxpool.padding)
        self.stages = nn.ModuleList(_Stage(getattr(enc, name)) for name in TAP_NAMES[2:])
        self.skips = model.skips
        n_pools = len(model.pyramid.pools)
        self.levels = nn.ModuleList(_Level(level, n_pools if i == len(model.decoder) - 1 else 0)
                                    for i, level in enumerate(model.decoder))
        self.pyramid = _Pyramid(model.pyramid)
        head = model.head.conv
        self.head = _TapConv(head) if head.kernel_size[0] * head.kernel_size[1] > 1 else _Conv(head)
        self.head_norm = _preactivation(model.head.norm, self.head)
        self.arena = _Arena()

    def _encode(self, x: torch.Tensor, budget: int | None) -> dict[str, torch.Tensor]:
        n, arena = x.shape[0], self.arena
        taps = {"conv1": self.stem(x, arena.take, budget)}
        # MaxPool kxkxk: in-plane first (k*k fewer values to pool along z); max is separable.
        k, s, p = self.maxpool
        h = _per_slice(lambda t, out: _into(F.max_pool2d(t, k, s, p), out), taps["conv1"], arena.take, budget,
                       taps["conv1"][0].numel())
        pooled = _zmax_pool(h, n, k, s, p, arena.take)
        arena.give(h)
        h = taps["pool"] = pooled
        for name, stage in zip(TAP_NAMES[2:], self.stages):
            h = taps[name] = _per_slice(stage.run, h, arena.take, budget, 4 * h[0].numel(), stage.pool)
        return taps

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_norm(x))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, 3, self.in_channels, "AHNet")
        x, crop = pad_to_multiple(x, self.size_multiple)
        n, size = x.shape[0], x.shape[2:]
        budget = CPU_CHUNK_ELEMENTS if x.device.type == "cpu" else None
        try:
            taps = self._encode(x, budget)
            h = taps.pop("layer4")
            for skip, level in zip(self.skips, self.levels):
                h = level(h, taps.pop(skip), n, budget, self.arena)
            self.pyramid(h, budget)
            y = torch.cat([self._head(h[part]) for part in _chunks(h.shape[0], h[0].numel(), budget)])
        finally:
            self.arena.reset()
        y = y.reshape(n, -1, *y.shape[1:]).permute(0, 2, 3, 4, 1)      # (N, K, X/2, Y/2, Z/2)
        y = F.interpolate(y, size=size, mode="trilinear", align_corners=False)
        return crop_spatial(y, crop)


# --- other networks: folded batch norms and channels-last memory ----------------------------------

#: (conv, norm) attribute pairs that a module applies as norm(conv(x)), by module type.
_CONV_NORM_PAIRS: dict[type, tuple[tuple[str, str], ...]] = {
    ResNet: (("conv1", "bn1"),),
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
}


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution into it, in place (eval only):
    conv-norm runs inside ``nn.Sequential`` and the ResNet blocks' ``convK``/``bnK`` pairs."""
    for module in list(model.modules()):
        for conv_name, bn_name in _CONV_NORM_PAIRS.get(type(module), ()):
            setattr(module, conv_name, fuse_conv_bn_eval(getattr(module, conv_name), getattr(module, bn_name)))
            setattr(module, bn_name, nn.Identity())
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = module._modules[a], module._modules[b]
                if isinstance(conv, nn.modules.conv._ConvNd) and isinstance(bn, Norm):
                    module._modules[a], module._modules[b] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    return model


class ChannelsLast(nn.Module):
    """A batch-norm-folded copy of a 2D or 3D network run in channels-last memory."""

    def __init__(self, model: nn.Module):
        super().__init__()
        three_d = any(isinstance(m, nn.Conv3d) for m in model.modules())
        self.memory_format = torch.channels_last_3d if three_d else torch.channels_last
        self.model = fold_batchnorm(copy.deepcopy(model).eval()).to(memory_format=self.memory_format)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=self.memory_format)).contiguous()


def optimize_for_inference(model: nn.Module) -> nn.Module:
    """The fastest eval-only equivalent of ``model`` (the default for ``ahnet predict``).

    :class:`AHNet` becomes a :class:`FastAHNet` where every module has a fast form (the paper's and
    the released networks); any other configuration (e.g. the isotropic ablation, a 1x1x3 head)
    keeps its own slice-major forward in evaluation mode, never an error. Other networks become a
    :class:`ChannelsLast` copy with folded batch norms. ``model`` is not changed.
    """
    if isinstance(model, AHNet):
        try:
            return FastAHNet(model.eval())
        except NotCovered:
            return EvalOnly(model)
    return ChannelsLast(model)


class EvalOnly(nn.Module):
    """A copy of ``model`` in evaluation mode without gradients (the fast path's fallback)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
