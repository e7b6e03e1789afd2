"""The building blocks of the eval-only fast forms that networks derive from themselves (Table 3).

AH-Net's encoder and decoder kernels are anisotropic (§3.2-3.3): 3x3x1 and 1x1x1 convolve each
slice alone, 1x1x3 only mixes neighbouring slices. Its fast form therefore keeps features as a
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

There is one network: each AH-Net module (:mod:`ahnet.models.ahnet`) builds its own fast form with a
``fast_form`` method written beside its ``forward`` and marked by :func:`fast_form_of` with the
forward it computes; :func:`fast_form` refuses a form whose module now runs another forward (a
subclass's, a patched one), and :func:`optimize_for_inference` then keeps the module's own forward.
This module holds what those forms share: folded convolutions, the chunking over slices, the arena.
Other networks (MC-GCN, U-Nets) get the cheap part: folded batch norms and channels-last memory.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from . import layout

CL = torch.channels_last
#: Elements a chunk of slices may hold on CPU: 16 MB of float32. Smaller chunks fit the cache no
#: better in practice and mean more, shorter parallel regions (each waits for every thread: slow
#: on a shared machine); larger ones exceed glibc's 32 MB limit for reusing freed memory.
CPU_CHUNK_ELEMENTS = 1 << 22
Norm = nn.modules.batchnorm._BatchNorm
Take = Callable[[tuple[int, ...], torch.Tensor], torch.Tensor]
Chunked = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class NotCovered(ValueError):
    """A module the fast path has no fast form for: :func:`optimize_for_inference` then keeps the
    network's own (slice-major) forward, with the same outputs."""


def fast_form_of(*methods: Callable) -> Callable:
    """Marks a module's ``fast_form`` method as computing what ``methods`` (its ``forward``, or the
    methods the module is run by) compute in evaluation mode, so that :func:`fast_form` can tell
    when the module runs other code."""

    def mark(make: Callable) -> Callable:
        make.computes = methods
        return make

    return mark


def fast_form(module: nn.Module, *args) -> nn.Module:
    """``module.fast_form(*args)``: the module's eval-only fast form, built from its weights (copied,
    the module untouched). Raises :class:`NotCovered` when the module has none, or when its class
    runs other code than the form was written for (a subclass overriding ``forward``, a patched
    method): a change to the model then reaches prediction as the model's own forward, never ignored."""
    cls = type(module)
    make = getattr(cls, "fast_form", None)
    if make is None:
        raise NotCovered(f"no fast form of {cls.__name__}")
    for method in getattr(make, "computes", (None,)):
        if method is None or getattr(cls, method.__name__, None) is not method:
            name = "forward" if method is None else method.__name__
            raise NotCovered(f"{cls.__name__}.{name} is not the code its fast form computes")
    return make(module, *args)


def check_sequential(module: nn.Module) -> nn.Module:
    """``module``, a container that fast forms read part by part: refused (:class:`NotCovered`) when its
    forward is not ``nn.Sequential``'s, i.e. not its parts in order."""
    if type(module).forward is not nn.Sequential.forward:
        raise NotCovered(f"{type(module).__name__}.forward is not its parts in order")
    return module


def chunk_budget(x: torch.Tensor) -> int | None:
    """Elements a chunk of slices may hold for ``x``'s device (``CPU_CHUNK_ELEMENTS`` on the CPU; on a
    GPU whole tensors at once)."""
    return CPU_CHUNK_ELEMENTS if x.device.type == "cpu" else None


def norm_affine(bn: Norm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm as ``scale * x + shift`` per channel."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias.detach() - bn.running_mean * scale


def batch_zview(x: torch.Tensor, n: int) -> torch.Tensor:
    """Slices ``(N*Z, C, X, Y)`` (channels-last) as the same memory read ``(N, C, Z, X*Y)``: the slices of
    ``n`` slice-major volumes (:func:`~.layout.from_slices`) in their z view (:func:`~.layout.zview`)."""
    return layout.zview(layout.from_slices(x, n))


def batch_from_zview(v: torch.Tensor, sx: int, sy: int) -> torch.Tensor:
    """Inverse of :func:`batch_zview`."""
    return layout.slices(layout.from_zview(v, sx, sy))


def pool_slice_groups(x: torch.Tensor, k: int) -> torch.Tensor:
    """MaxPool (1, 1, k)/(1, 1, k) over consecutive groups of ``k`` slices (z is a multiple of k),
    as element-wise maxima: pooling kernels would also write indices, twice the output traffic."""
    v = x.view(x.shape[0] // k, k, *x.shape[1:])
    out = v[:, 0]
    for i in range(1, k):
        out = torch.maximum(out, v[:, i])
    return out


def zmax_pool(x: torch.Tensor, n: int, k: int, s: int, p: int, take: Take) -> torch.Tensor:
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


def resize_z(x: torch.Tensor, n: int, sz: int, rows: slice) -> torch.Tensor:
    """Rows ``rows`` of ``x`` (``n`` volumes of slices) resized linearly along z to ``sz`` slices a
    volume, as ``F.interpolate`` does (``align_corners=False``): each output slice blends its two
    source slices, so the resized volume is made a chunk at a time. With :func:`resize_xy` this is
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


def resize_xy(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Bilinear in-plane resizing (``align_corners=False``) of every slice."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def chunks(slices: int, elements_per_slice: int, budget: int | None, multiple: int = 1) -> Iterator[slice]:
    """Ranges of slices of at most ``budget`` elements (all when ``budget`` is None), each a
    multiple of ``multiple`` slices."""
    step = slices if budget is None else max(1, budget // max(1, elements_per_slice * multiple)) * multiple
    for start in range(0, slices, step):
        yield slice(start, min(start + step, slices))


def per_slice(fn: Chunked, x: torch.Tensor, take: Take, budget: int | None, temporaries: int,
              multiple: int = 1) -> torch.Tensor:
    """``fn`` over ``x`` a chunk at a time, into a tensor from ``take``. ``fn(chunk, out)`` treats
    slices, or groups of ``multiple`` slices that become one, alone, and writes its result into
    ``out`` (None for the first chunk, whose result sets the shape); ``temporaries``: its temporary
    elements per input slice."""
    out = None
    for part in chunks(x.shape[0], temporaries, budget, multiple):
        rows = slice(part.start // multiple, part.stop // multiple)
        if out is None:
            y = fn(x[part], None)
            out = take((x.shape[0] // multiple, *y.shape[1:]), y)
            out[rows] = y
        else:
            fn(x[part], out[rows])
    return out


def into(y: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """``y``, copied into ``out`` when given (results without an ``out=`` variant)."""
    return y if out is None else out.copy_(y)


class Arena:
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


class NormReLU(nn.Module):
    """Pre-activation BatchNorm-ReLU (the decoder's, §3.3) as one multiply-add into a new tensor."""

    def __init__(self, bn: Norm):
        super().__init__()
        scale, shift = norm_affine(bn)
        self.register_buffer("scale", scale.view(1, -1, 1, 1))
        self.register_buffer("shift", shift.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.addcmul(self.shift.to(x.dtype), x, self.scale.to(x.dtype), out=out).relu_()


class ClampReLU(nn.Module):
    """Pre-activation BatchNorm-ReLU whose affine part went into the following 1x1 convolution
    (:func:`preactivation`): one clamp with per-channel bounds, one pass over the maps."""

    def __init__(self, low: torch.Tensor, high: torch.Tensor):
        super().__init__()
        self.register_buffer("low", low.view(1, -1, 1, 1))
        self.register_buffer("high", high.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.clamp(x, self.low.to(x.dtype), self.high.to(x.dtype), out=out)


def preactivation(bn: Norm, conv: "InPlaneConv | TapConv") -> nn.Module:
    """BN-ReLU before ``conv`` (the decoder's order, §3.3), as cheap as the kernel allows.

    Before a 1x1 convolution: with the norm as ``s * x + b`` per channel,
    ``relu(s * x + b) = s * max(x, -b/s) + b`` where ``s > 0`` and ``s * min(x, -b/s) + b`` where
    ``s < 0``, so ``s`` goes into the convolution's weights, ``b`` into its bias (a 1x1
    convolution has no padding that would see it), and the maps need one clamp instead of a
    multiply-add and a ReLU: 35 % less time on them. A channel with ``s = 0`` is the constant
    ``relu(b)``, which goes into the bias. :class:`TapConv` qualifies (its taps are 1x1 convs);
    any other kernel keeps :class:`NormReLU`: its zero padding stands for norm outputs of 0, to
    which a folded bias would wrongly add ``b``.
    """
    if tuple(conv.weight.shape[2:]) != (1, 1):
        return NormReLU(bn)
    scale, shift = (t.double() for t in norm_affine(bn))
    live = scale != 0
    weight, bias = conv.weight.double(), conv.bias
    const = torch.where(live, shift, shift.clamp_min(0))
    folded_bias = weight[:, :, 0, 0] @ const + (0 if bias is None else bias.double())
    conv.weight = (weight * torch.where(live, scale, 0).view(1, -1, 1, 1)).to(conv.weight.dtype).contiguous(
        memory_format=CL)
    conv.bias = folded_bias.to(conv.weight.dtype)
    bound = torch.where(live, -shift / torch.where(live, scale, 1), 0)
    inf = torch.full_like(bound, float("inf"))
    return ClampReLU(torch.where(scale > 0, bound, -inf).float(), torch.where(scale < 0, bound, inf).float())


def folded(conv: nn.Conv3d, weight: torch.Tensor, bn: Norm | None,
            extra_shift: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``weight`` (the conv's, reshaped for 2D) and bias with a following norm folded in."""
    bias = None if conv.bias is None else conv.bias.detach()
    if bn is not None:
        scale, shift = norm_affine(bn)
        weight = weight * scale.view(-1, 1, 1, 1)
        bias = shift if bias is None else bias * scale + shift
    if extra_shift is not None:
        bias = extra_shift if bias is None else bias + extra_shift
    return weight.contiguous(memory_format=CL), bias


class InPlaneConv(nn.Module):
    """A ``(kx, ky, 1)`` Conv3d as a Conv2d over slices, with a following BatchNorm folded in."""

    def __init__(self, conv: nn.Conv3d, bn: Norm | None = None, extra_shift: torch.Tensor | None = None):
        super().__init__()
        if conv.kernel_size[2] != 1 or conv.stride[2] != 1 or conv.groups != 1:
            raise NotCovered(f"{conv} is not an in-plane convolution")
        weight, bias = folded(conv, conv.weight.detach()[..., 0], bn, extra_shift)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.stride, self.padding = conv.stride[:2], conv.padding[:2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


class TapConv(nn.Module):
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


class ThroughPlaneConv(nn.Module):
    """A ``(1, 1, k)`` Conv3d ('same' size along z) as a ``(k, 1)`` Conv2d on ``(N, C, Z, X*Y)``."""

    def __init__(self, conv: nn.Conv3d, bn: Norm | None = None):
        super().__init__()
        k = conv.kernel_size[2]
        if conv.kernel_size[:2] != (1, 1) or conv.stride != (1, 1, 1) or conv.padding[2] * 2 + 1 != k:
            raise NotCovered(f"{conv} is not a 'same' through-plane convolution")
        w = conv.weight.detach().reshape(conv.out_channels, conv.in_channels, k, 1)
        weight, bias = folded(conv, w, bn, None)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.halo = conv.padding[2]

    def forward(self, x: torch.Tensor, zeros: tuple[int, int]) -> torch.Tensor:
        """``x``: consecutive slices of one volume with ``halo`` neighbours each side, except where
        ``zeros`` says how many zero slices stand in for them (the volume's ends)."""
        v = batch_zview(x, 1)
        if any(zeros):
            v = F.pad(v, (0, 0, *zeros))
        return batch_from_zview(F.conv2d(v, self.weight, self.bias), *x.shape[2:])


def zchunks(n: int, sz: int, temporaries: int, budget: int | None,
            halo: int) -> Iterator[tuple[slice, slice, tuple[int, int]]]:
    """Chunks along z inside each volume: (slices to produce, slices to read: those and ``halo``
    neighbours each side, zero slices needed beyond the volume's ends)."""
    for i in range(n):
        for part in chunks(sz, temporaries, budget):
            lo, hi = max(part.start - halo, 0), min(part.stop + halo, sz)
            zeros = (halo - (part.start - lo), halo - (hi - part.stop))
            yield slice(i * sz + part.start, i * sz + part.stop), slice(i * sz + lo, i * sz + hi), zeros


def z_factor(pool: nn.Module | None) -> int:
    return pool.kernel_size[2] if isinstance(pool, nn.MaxPool3d) else 1


# --- other networks: folded batch norms and channels-last memory ----------------------------------

def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution into it, in place (eval only):
    conv-norm runs inside ``nn.Sequential`` and the pairs a module class names in its
    ``conv_norm_pairs`` (the ResNet blocks' ``convK``/``bnK``: its forward applies ``bnK(convK(x))``)."""
    for module in list(model.modules()):
        for conv_name, bn_name in getattr(type(module), "conv_norm_pairs", ()):
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

    A network with a ``fast_form`` (:class:`~ahnet.models.ahnet.AHNet`: a
    :class:`~ahnet.models.ahnet.FastAHNet` where every module has a fast form, the paper's and the
    released networks) gets it; where any module has none (e.g. the isotropic ablation, a 1x1x3 head)
    or runs another forward than its form's, the network keeps its own slice-major forward in
    evaluation mode, never an error. Other networks become a :class:`ChannelsLast` copy with folded
    batch norms. ``model`` is not changed.
    """
    if hasattr(type(model), "fast_form"):
        try:
            return fast_form(model)
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
