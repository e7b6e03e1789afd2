"""3D Anisotropic Hybrid Network, AH-Net (§3.2-3.3, Fig. 3).

The encoder is a ResNet whose 2D kernels gained a depth of one (3x3x1, 1x1x1) so it can take the
MC-GCN's weights (Eq. 1-3, :mod:`ahnet.models.transfer`): it sees each slice at full in-plane
resolution, as the 2D net did. The z axis is reduced by max pooling only (AH-Downsample, §3.2.3).
The decoder restores the 3D context with anisotropic 3x3x1 and 1x1x3 convolutions in densely
connected blocks (§3.3), LinkNet-style projection + trilinear up-sampling + sum at each level, a
pyramid volumetric pooling module, and a final projection.

Tensors are ``(N, C, X, Y, Z)``; Z is the thick-slice axis. They run slice-major
(:mod:`ahnet.models.layout`), so the ReLUs are not in place: a slice-major tensor is a view of a 2D
kernel's output, and an in-place operation on a view makes autograd copy the whole tensor in the
backward pass (out of place, nothing more is kept for backward: the next convolution saves its input
either way).

Prediction runs each module's eval-only fast form, built by its ``fast_form`` method written beside its
``forward`` (``Fast*`` classes below, batch norms folded, work tensors from an arena;
:mod:`ahnet.models.fast`): one network, whose forms the tests hold to the modules' outputs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from .fast import (Arena, InPlaneConv, NormReLU, NotCovered, Take, TapConv, ThroughPlaneConv, check_sequential,
                   chunk_budget, chunks, fast_form, fast_form_of, folded, into, norm_affine, per_slice,
                   pool_slice_groups, preactivation, resize_xy, resize_z, z_factor, zchunks, zmax_pool)
from .layout import (SliceBatchNorm3d, SliceConv3d, SliceMaxPool3d, cat_channels, max_pool, resize,
                     to_slice_major)
from .padding import check_input, crop_spatial, pad_to_multiple
from .presets import AHNET_PRESETS, AHNetSpec, resolve_preset
from .recompute import Run, direct, runner
from .resnet import RESNET_LAYOUTS, TAP_NAMES, BasicBlock, stage_widths


class AHDownsample(nn.Module):
    """AH-Downsample (§3.2.3, Fig. 3): Conv 1x1x1/(s,s,1), MaxPool 1x1xs/(1,1,s), BatchNorm.

    Striding in z would skip every other slice; pooling keeps the stronger of each pair instead.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv = SliceConv3d(in_channels, out_channels, 1, stride=(stride, stride, 1), bias=False)
        self.pool = SliceMaxPool3d((1, 1, stride), stride=(1, 1, stride)) if stride > 1 else nn.Identity()
        self.bn = SliceBatchNorm3d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pool(self.conv(x)))


class AHBottleneck(nn.Module):
    """AH-ResNet bottleneck (Fig. 3): 1x1x1 - 3x3x1/(s,s,1) - 1x1x1, z max-pooled when s > 1."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = SliceConv3d(inplanes, planes, 1, bias=False)
        self.bn1 = SliceBatchNorm3d(planes)
        self.conv2 = SliceConv3d(planes, planes, (3, 3, 1), stride=(stride, stride, 1), padding=(1, 1, 0), bias=False)
        self.bn2 = SliceBatchNorm3d(planes)
        self.conv3 = SliceConv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = SliceBatchNorm3d(planes * 4)
        self.relu = nn.ReLU()
        self.pool_z = SliceMaxPool3d((1, 1, stride), stride=(1, 1, stride)) if stride > 1 else nn.Identity()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.pool_z(self.bn3(self.conv3(out)))
        return self.relu(out + identity)

    @fast_form_of(forward)
    def fast_form(self) -> "FastBlock":
        """The eval-only form (:class:`FastBlock`): conv1-bn1, conv2-bn2, conv3-bn3 folded."""
        return FastBlock(self, [(self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)])


class AHBasicBlock(nn.Module):
    """AH-ResNet basic block (ResNet-18/34 backbones): two 3x3x1 convs, z max-pooled when s > 1."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = SliceConv3d(inplanes, planes, (3, 3, 1), stride=(stride, stride, 1), padding=(1, 1, 0), bias=False)
        self.bn1 = SliceBatchNorm3d(planes)
        self.relu = nn.ReLU()
        self.conv2 = SliceConv3d(planes, planes, (3, 3, 1), padding=(1, 1, 0), bias=False)
        self.bn2 = SliceBatchNorm3d(planes)
        self.pool_z = SliceMaxPool3d((1, 1, stride), stride=(1, 1, stride)) if stride > 1 else nn.Identity()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.pool_z(self.bn2(self.conv2(out)))
        return self.relu(out + identity)

    @fast_form_of(forward)
    def fast_form(self) -> "FastBlock":
        """The eval-only form (:class:`FastBlock`): conv1-bn1, conv2-bn2 folded."""
        return FastBlock(self, [(self.conv1, self.bn1), (self.conv2, self.bn2)])

class FastBlock(nn.Module):
    """Eval-only form of an AH-ResNet block (Fig. 3) on a batch of slices, batch norms folded.

    ``pairs``: the block's (conv, norm) pairs of its main branch in order, as its ``fast_form`` lists
    them. The AH-Downsample's norm comes after its max pooling, so only its shift is folded (into the
    main branch's last conv: pooling commutes with adding a constant); its scale is applied in the
    residual sum.
    """

    def __init__(self, block: nn.Module, pairs: list[tuple[nn.Conv3d, nn.Module]]):
        super().__init__()
        ds = block.downsample
        if ds is not None and type(ds).forward is not AHDownsample.forward:
            raise NotCovered(f"{type(ds).__name__}.forward is not AH-Downsample's")
        scale, shift = norm_affine(ds.bn) if ds is not None else (None, None)
        last = len(pairs) - 1
        self.convs = nn.ModuleList(InPlaneConv(conv, bn, shift if i == last else None)
                                   for i, (conv, bn) in enumerate(pairs))
        self.pool = z_factor(block.pool_z)
        self.down = None if ds is None else InPlaneConv(ds.conv)
        self.register_buffer("down_scale", None if scale is None else scale.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        h = x
        for conv in self.convs[:-1]:
            h = conv(h).relu_()
        h = pool_slice_groups(self.convs[-1](h), self.pool)
        if self.down is None:
            return torch.add(h, x, out=out).relu_()
        identity = pool_slice_groups(self.down(x), self.pool)
        return torch.addcmul(h, identity, self.down_scale.to(h.dtype), out=out).relu_()


class AHResNetEncoder(nn.Module):
    """The transferred encoder (§3.2.2-3.2.3): the 2D ResNet with a depth added to every kernel.

    Module names mirror :class:`~ahnet.models.resnet.ResNet` so that weights transfer key by key.
    The stem is Conv 7x7x3/(2,2,1), MaxPool 1x1x2/(1,1,2) and MaxPool 3x3x3/(2,2,2) (§3.2.2).
    """

    def __init__(self, backbone: str = "resnet50", in_channels: int = 1, pool_before_norm: bool = False):
        super().__init__()
        block2d, layers = RESNET_LAYOUTS[backbone]
        block = AHBasicBlock if block2d is BasicBlock else AHBottleneck
        self.pool_before_norm = pool_before_norm
        self.inplanes = 64
        self.conv1 = SliceConv3d(in_channels, 64, (7, 7, 3), stride=(2, 2, 1), padding=(3, 3, 1), bias=False)
        self.bn1 = SliceBatchNorm3d(64)
        self.relu = nn.ReLU()
        self.pool_z = SliceMaxPool3d((1, 1, 2), stride=(1, 1, 2))
        self.maxpool = SliceMaxPool3d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = AHDownsample(self.inplanes, planes * block.expansion, stride)
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Conv 7x7x3/(2,2,1), BN, ReLU and MaxPool 1x1x2 (order set by ``pool_before_norm``)."""
        if self.pool_before_norm:
            return self.relu(self.bn1(self.pool_z(self.conv1(x))))
        return self.pool_z(self.relu(self.bn1(self.conv1(x))))

    def features(self, x: torch.Tensor, run: Run = direct) -> dict[str, torch.Tensor]:
        """Encoder outputs named as the 2D ResNet's (``resnet.TAP_NAMES``); ``run`` runs the stem and
        each block (:func:`~ahnet.models.recompute.recomputed` to keep only their inputs)."""
        taps = {"conv1": run(self.stem, x, owner=self.bn1)}
        taps["pool"] = self.maxpool(taps["conv1"])
        h = taps["pool"]
        for name in TAP_NAMES[2:]:
            for block in getattr(self, name):
                h = run(block, h)
            taps[name] = h
        return taps

    @fast_form_of(features, stem)
    def fast_form(self) -> "FastEncoder":
        """The eval-only form (:class:`FastEncoder`)."""
        return FastEncoder(self)

class FastStem(nn.Module):
    """Conv 7x7x3/(2,2,1) as a 7x7 Conv2d over 3-slice stacks, MaxPool 1x1x2, BN, ReLU (§3.2.2)."""

    def __init__(self, encoder: AHResNetEncoder):
        super().__init__()
        conv = encoder.conv1
        if conv.stride[2] != 1 or conv.kernel_size[2] != 2 * conv.padding[2] + 1:
            raise NotCovered(f"{conv} is not 'same' along z")
        self.kz, self.pz = conv.kernel_size[2], conv.padding[2]
        w = conv.weight.detach().permute(0, 1, 4, 2, 3)
        w = w.reshape(conv.out_channels, conv.in_channels * self.kz, *conv.kernel_size[:2])
        # Released order: max pooling between conv and norm, so the norm stays (a negative scale
        # would turn max into min); 2D order: the norm folds into the conv.
        self.norm = NormReLU(encoder.bn1) if encoder.pool_before_norm else None
        weight, bias = folded(conv, w, None if encoder.pool_before_norm else encoder.bn1, None)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.stride, self.padding = conv.stride[:2], conv.padding[:2]
        self.pool = z_factor(encoder.pool_z)

    def forward(self, x: torch.Tensor, take: Take, budget: int | None) -> torch.Tensor:
        """The ``conv1`` tap of ``(N, C, X, Y, Z)``, a chunk of slices at a time, each chunk's
        stacks ``(slices, C*kz, X, Y)`` (every slice with its z neighbours as channels) built alone."""
        n, c, sx, sy, sz = x.shape
        xp = F.pad(x, (self.pz, self.pz))
        per = self.weight.shape[0] * sx * sy // (self.stride[0] * self.stride[1])
        out = None
        for i in range(n):
            for part in chunks(sz, per, budget, self.pool):
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
        y = pool_slice_groups(F.conv2d(st, self.weight, self.bias, self.stride, self.padding), self.pool)
        return torch.clamp_min(y, 0, out=out) if self.norm is None else self.norm(y, out)


class FastStage(nn.Module):
    """A residual stage (layer1-4) of fast blocks; every block is per slice or per pooled pair, so
    the stage runs in chunks of slices."""

    def __init__(self, layer: nn.Sequential):
        super().__init__()
        self.blocks = nn.ModuleList(fast_form(b) for b in check_sequential(layer))
        self.pool = 1
        for b in self.blocks:
            self.pool *= b.pool

    def run(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        for block in self.blocks[:-1]:
            x = block(x)
        return self.blocks[-1](x, out)


class FastEncoder(nn.Module):
    """Eval-only form of :class:`AHResNetEncoder`: its taps on a batch of slices from an arena."""

    def __init__(self, encoder: AHResNetEncoder):
        super().__init__()
        pool = encoder.maxpool
        self.maxpool = (pool.kernel_size, pool.stride, pool.padding)
        if not all(isinstance(v, int) for v in self.maxpool):
            raise NotCovered(f"{pool} is not the same along every axis")
        self.stem = FastStem(encoder)
        self.stages = nn.ModuleList(FastStage(getattr(encoder, name)) for name in TAP_NAMES[2:])

    def features(self, x: torch.Tensor, budget: int | None, arena: Arena) -> dict[str, torch.Tensor]:
        n = x.shape[0]
        taps = {"conv1": self.stem(x, arena.take, budget)}
        # MaxPool kxkxk: in-plane first (k*k fewer values to pool along z); max is separable.
        k, s, p = self.maxpool
        h = per_slice(lambda t, out: into(F.max_pool2d(t, k, s, p), out), taps["conv1"], arena.take, budget,
                      taps["conv1"][0].numel())
        pooled = zmax_pool(h, n, k, s, p, arena.take)
        arena.give(h)
        h = taps["pool"] = pooled
        for name, stage in zip(TAP_NAMES[2:], self.stages):
            h = taps[name] = per_slice(stage.run, h, arena.take, budget, 4 * h[0].numel(), stage.pool)
        return taps


class NormReLUConv(nn.Sequential):
    """Pre-activation unit BatchNorm - ReLU - Conv3d, the decoder's building block (as DenseNet)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int, int] | int = 1,
                 bias: bool = False):
        k = (kernel_size,) * 3 if isinstance(kernel_size, int) else kernel_size
        super().__init__()
        self.add_module("norm", SliceBatchNorm3d(in_channels))
        self.add_module("relu", nn.ReLU())
        self.add_module("conv", SliceConv3d(in_channels, out_channels, k, padding=tuple(s // 2 for s in k), bias=bias))


class AnisotropicDenseLayer(nn.Module):
    """§3.3: xy bottleneck (1x1x1-3x3x1-1x1x1), then z bottleneck (1x1x1-1x1x3-1x1x1) summed with
    its input; the result (``growth_rate`` maps) is concatenated to the layer's input."""

    def __init__(self, in_channels: int, growth_rate: int, bottleneck_factor: int):
        super().__init__()
        wide = bottleneck_factor * growth_rate
        self.xy = nn.Sequential(
            NormReLUConv(in_channels, wide, 1),
            NormReLUConv(wide, growth_rate, (3, 3, 1)),
            NormReLUConv(growth_rate, growth_rate, 1),
        )
        self.z = nn.Sequential(
            NormReLUConv(growth_rate, growth_rate, 1),
            NormReLUConv(growth_rate, growth_rate, (1, 1, 3)),
            NormReLUConv(growth_rate, growth_rate, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.xy(x)
        return cat_channels([x, h + self.z(h)])

    @fast_form_of(forward)
    def fast_form(self) -> "FastAnisotropicDenseLayer":
        """The eval-only form on slices (:class:`FastAnisotropicDenseLayer`)."""
        return FastAnisotropicDenseLayer(self)

class FastDenseLayer(nn.Module, ABC):
    """Eval-only form of a dense layer (§3.3), writing its ``growth`` maps into the block's buffer.

    The in-plane part (:meth:`xy`, then :meth:`z_in`) runs per slice; the 1x1x3 convolution ``z`` and
    :meth:`z_out` in chunks along z with one neighbour slice read on each side. Each kind of layer
    says what its parts are.
    """

    z: ThroughPlaneConv
    growth: int

    @abstractmethod
    def xy(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        """The in-plane bottleneck, to ``growth`` maps; per slice."""

    @abstractmethod
    def z_in(self, h: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        """Everything between :meth:`xy` and the 1x1x3 convolution; per slice."""

    @abstractmethod
    def z_out(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """From the 1x1x3 convolution's output ``z`` (and :meth:`xy`'s ``h``) to the ``growth`` maps."""

    def forward(self, buf: torch.Tensor, scratch: tuple[torch.Tensor, torch.Tensor], start: int, stop: int,
                n: int, budget: int | None) -> None:
        """Read ``buf[:, start:stop]``, write ``buf[:, stop:stop+growth]``; ``scratch``: two tensors
        of ``growth`` maps. The through-plane part reads its neighbour slices from the full map."""
        x = buf[:, start:stop]
        h = per_slice(self.xy, x, lambda shape, like: scratch[0], budget, x[0].numel())
        z_in = per_slice(self.z_in, h, lambda shape, like: scratch[1], budget, 2 * h[0].numel())
        out = buf[:, stop:stop + self.growth]
        for part, ext, zeros in zchunks(n, x.shape[0] // n, 4 * h[0].numel(), budget, self.z.halo):
            out[part] = self.z_out(self.z(z_in[ext], zeros), h[part])


def _norm_conv(unit: NormReLUConv) -> tuple[nn.Module, nn.Conv3d]:
    """The norm and the convolution of a pre-activation unit that fast forms fold."""
    check_sequential(unit)
    return unit.norm, unit.conv


class FastAnisotropicDenseLayer(FastDenseLayer):
    """:class:`AnisotropicDenseLayer` on slices: xy 1x1x1-3x3x1-1x1x1, z 1x1x1-1x1x3-1x1x1, each
    BN-ReLU-conv, the norms folded into the convolution before them."""

    def __init__(self, layer: AnisotropicDenseLayer):
        super().__init__()
        (na, a), (nb, b), (nc, c) = (_norm_conv(u) for u in check_sequential(layer.xy))
        (nd, d), (ne, e), (nf, f) = (_norm_conv(u) for u in check_sequential(layer.z))
        self.xy_convs = nn.ModuleList([InPlaneConv(a, nb), InPlaneConv(b, nc), InPlaneConv(c)])
        self.z_first, self.z, self.z_last = InPlaneConv(d, ne), ThroughPlaneConv(e, nf), InPlaneConv(f)
        self.xy_norm, self.z_norm = preactivation(na, self.xy_convs[0]), preactivation(nd, self.z_first)
        self.growth = self.xy_convs[-1].weight.shape[0]

    def xy(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        h = self.xy_norm(x)
        for conv in self.xy_convs[:-1]:
            h = conv(h).relu_()
        return into(self.xy_convs[-1](h), out)

    def z_in(self, h: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        return into(self.z_first(self.z_norm(h)).relu_(), out)

    def z_out(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.z_last(z.relu_()).add_(h)


class Pseudo3DDenseLayer(nn.Module):
    """Released code's dense layer: 1x1x1 to ``factor*growth``; 3x3x1 to ``growth``; 1x1x3 on that;
    the 3x3x1 and 1x1x3 outputs summed; 1x1x1; concatenated to the input."""

    def __init__(self, in_channels: int, growth_rate: int, bottleneck_factor: int):
        super().__init__()
        wide = bottleneck_factor * growth_rate
        self.reduce = NormReLUConv(in_channels, wide, 1)
        self.xy = NormReLUConv(wide, growth_rate, (3, 3, 1))
        self.z = NormReLUConv(growth_rate, growth_rate, (1, 1, 3))
        self.mix = NormReLUConv(growth_rate, growth_rate, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.xy(self.reduce(x))
        return cat_channels([x, self.mix(h + self.z(h))])

    @fast_form_of(forward)
    def fast_form(self) -> "FastPseudo3DDenseLayer":
        """The eval-only form on slices (:class:`FastPseudo3DDenseLayer`)."""
        return FastPseudo3DDenseLayer(self)

class FastPseudo3DDenseLayer(FastDenseLayer):
    """:class:`Pseudo3DDenseLayer` on slices: reduce 1x1x1, xy 3x3x1, z 1x1x3 on it, summed, mix 1x1x1."""

    def __init__(self, layer: Pseudo3DDenseLayer):
        super().__init__()
        (n_reduce, reduce), (n_xy, xy), (n_z, z), (n_mix, mix) = (
            _norm_conv(u) for u in (layer.reduce, layer.xy, layer.z, layer.mix))
        self.xy_convs = nn.ModuleList([InPlaneConv(reduce, n_xy), InPlaneConv(xy)])
        self.z, self.mix = ThroughPlaneConv(z), InPlaneConv(mix)
        self.xy_norm, self.z_norm = preactivation(n_reduce, self.xy_convs[0]), NormReLU(n_z)
        self.mix_norm = preactivation(n_mix, self.mix)
        self.growth = self.xy_convs[-1].weight.shape[0]

    def xy(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        return into(self.xy_convs[1](self.xy_convs[0](self.xy_norm(x)).relu_()), out)

    def z_in(self, h: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        return self.z_norm(h, out)

    def z_out(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.mix(self.mix_norm(z.add_(h)))


class IsotropicDenseLayer(nn.Module):
    """Ablation, not in the paper's network: the usual 3D dense layer (1x1x1 - 3x3x3 - 1x1x1) in
    place of the anisotropic 3x3x1 + 1x1x3 pair, to measure what the decomposition of §3.3 buys."""

    def __init__(self, in_channels: int, growth_rate: int, bottleneck_factor: int):
        super().__init__()
        self.body = nn.Sequential(
            NormReLUConv(in_channels, bottleneck_factor * growth_rate, 1),
            NormReLUConv(bottleneck_factor * growth_rate, growth_rate, 3),
            NormReLUConv(growth_rate, growth_rate, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cat_channels([x, self.body(x)])


DENSE_LAYERS: dict[str, type[nn.Module]] = {
    "anisotropic": AnisotropicDenseLayer, "pseudo3d": Pseudo3DDenseLayer, "isotropic": IsotropicDenseLayer,
}


class DenseBlock(nn.Sequential):
    """Densely connected anisotropic layers (§3.3); adds ``layers * growth_rate`` channels."""

    def __init__(self, layer: type[nn.Module], in_channels: int, layers: int, growth_rate: int, bottleneck_factor: int):
        super().__init__(*(
            layer(in_channels + i * growth_rate, growth_rate, bottleneck_factor) for i in range(layers)
        ))
        self.out_channels = in_channels + layers * growth_rate


class DecoderLevel(nn.Module):
    """One resolution of the decoder (§3.3): Conv 1x1x1 projection to the skip's width, trilinear
    up-sampling to the skip's size (LinkNet-style), sum with the encoder features, dense block."""

    def __init__(self, in_channels: int, skip_channels: int, dense: DenseBlock):
        super().__init__()
        self.project = NormReLUConv(in_channels, skip_channels, 1)
        self.dense = dense

    def forward(self, x: torch.Tensor, skip: torch.Tensor, run: Run = direct) -> torch.Tensor:
        """``run`` runs each dense layer (:func:`~ahnet.models.recompute.recomputed`: within a level
        that is itself recomputed, one layer's maps at a time)."""
        h = resize(self.project(x), skip.shape[2:]) + skip
        for layer in self.dense:
            h = run(layer, h)
        return h

    @fast_form_of(forward)
    def fast_form(self, front: int = 0) -> "FastLevel":
        """The eval-only form (:class:`FastLevel`), its buffer with ``front`` channels free in front."""
        return FastLevel(self, front)

class FastLevel(nn.Module):
    """Eval-only form of a decoder level (§3.3): project, up-sample, add the skip, dense block, in
    one buffer whose first ``front`` channels are left for the pyramid's maps."""

    def __init__(self, level: DecoderLevel, front: int):
        super().__init__()
        norm, conv = _norm_conv(level.project)
        self.project = InPlaneConv(conv)
        self.norm = preactivation(norm, self.project)
        self.layers = nn.ModuleList(fast_form(layer) for layer in check_sequential(level.dense))
        self.front, self.out_channels = front, level.dense.out_channels

    def forward(self, h: torch.Tensor, skip: torch.Tensor, n: int, budget: int | None, arena: Arena) -> torch.Tensor:
        size, rows = skip.shape[2:], skip.shape[0]
        # 1x1x1 first (fewer maps to resize), a chunk of slices at a time, then resized and summed
        # with the skip a chunk of output slices at a time.
        p = per_slice(lambda t, out: into(self.project(self.norm(t)), out), h, arena.take, budget,
                      2 * h[0].numel())
        arena.give(h)
        buf = arena.take((rows, self.front + self.out_channels, *size), skip)
        c = self.front + skip.shape[1]
        for part in chunks(rows, skip[0].numel(), budget):
            torch.add(resize_xy(resize_z(p, n, rows // n, part), size), skip[part], out=buf[part, self.front:c])
        arena.give(p, skip)  # read for the last time: their memory serves the scratch maps below
        scratch = tuple(arena.take((skip.shape[0], self.layers[0].growth, *size), skip) for _ in range(2))
        for layer in self.layers:
            layer(buf, scratch, self.front, c, n, budget)
            c += layer.growth
        arena.give(*scratch)
        return buf


class PyramidVolumetricPooling(nn.Module):
    """Pyramid volumetric pooling (§3.3): MaxPool kxkx1 for each k, each projected by Conv 1x1x1 to
    one channel and interpolated back; the maps are concatenated in front of the input features.

    Pooling uses ``ceil_mode`` so a map smaller than a kernel, or not a multiple of it, still pools
    (to one partial window); where the map is a multiple of every kernel this equals plain pooling.
    """

    def __init__(self, in_channels: int, pools: tuple[int, ...], padding: int = 0):
        super().__init__()
        self.pools = tuple(pools)
        self.proj = nn.ModuleList(
            SliceConv3d(in_channels, 1, 1, padding=(padding, padding, 0)) for _ in self.pools
        )
        self.out_channels = in_channels + len(self.pools)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        maps = [
            resize(proj(max_pool(x, (k, k, 1), (k, k, 1), ceil_mode=True)), size)
            for k, proj in zip(self.pools, self.proj)
        ]
        return cat_channels([*maps, x])

    @fast_form_of(forward)
    def fast_form(self) -> "FastPyramid":
        """The eval-only form (:class:`FastPyramid`)."""
        return FastPyramid(self)

class FastPyramid(nn.Module):
    """Eval-only form of the pyramid volumetric pooling (§3.3), into the buffer's front channels.

    Max pooling with kernel k is taken from the map already pooled with the largest kernel dividing
    k (exact, ceil mode included), so the full-size map is read once, a chunk at a time.
    """

    def __init__(self, pyramid: PyramidVolumetricPooling):
        super().__init__()
        self.pools = pyramid.pools
        self.proj = nn.ModuleList(InPlaneConv(p) for p in pyramid.proj)

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
                                       for part in chunks(buf.shape[0], buf[0].numel(), budget)])
            else:
                pooled[k] = F.max_pool2d(pooled[src], k // src, k // src, ceil_mode=True)
        maps = [resize_xy(proj(pooled[k][:, front:]), buf.shape[2:]) for k, proj in zip(self.pools, self.proj)]
        for part in chunks(buf.shape[0], buf[0].numel(), budget):  # the front channels share cache lines
            torch.cat([m[part] for m in maps], dim=1, out=buf[part, :front])


class AHNet(nn.Module):
    """AH-Net (§3.2-3.3, Fig. 3) for 3D segmentation or heatmap regression.

    Args:
        out_channels: output maps: segmentation classes, or 1 for a regression heatmap.
        backbone: ``"resnet50"`` (the paper's), ``"resnet34"`` or ``"resnet18"`` (small machines).
        in_channels: image channels of the volume (1 for CT or DBT).
        preset: ``"paper"`` (default) or ``"released"``; see :mod:`ahnet.models.presets`.
        **overrides: fields of :class:`~ahnet.models.presets.AHNetSpec` to change.

    Input ``(N, in_channels, X, Y, Z)``, Z the thick-slice axis, of any size: it is zero-padded to a
    multiple of 32 on every axis (the encoder halves X, Y and Z five times) and the output is
    cropped back, so the output is ``(N, out_channels, X, Y, Z)``.

    Decoder levels, deepest first (widths for ResNet-50, growth 20, 3 layers a block):
    layer4 (2048) → layer3 (1024) → layer2 (512) → layer1 (256) → pool (64, same resolution as
    layer1, no up-sampling) → conv1 (64, half resolution), each adding 60 channels. The pyramid
    pooling then runs on the half-resolution features, and the head projects them and up-samples
    (trilinear x2) to the input size.

    The network runs in the slice-major layout of :mod:`ahnet.models.layout` (its anisotropic
    kernels as 2D kernels on views, in training as in inference). ``slice_major = False`` runs
    the very same modules on ordinary 5D tensors with 3D kernels: the reference in the tests.
    """

    size_multiple = (32, 32, 32)

    def __init__(
        self,
        out_channels: int = 1,
        backbone: str = "resnet50",
        in_channels: int = 1,
        preset: str = "paper",
        **overrides: Any,
    ):
        super().__init__()
        spec: AHNetSpec = resolve_preset(AHNET_PRESETS, preset, overrides, "AH-Net")
        if backbone not in RESNET_LAYOUTS:
            raise ConfigError(f"unknown backbone {backbone!r}; choose one of {sorted(RESNET_LAYOUTS)}")
        if spec.dense_layer not in DENSE_LAYERS:
            raise ConfigError(f"unknown dense_layer {spec.dense_layer!r}; choose one of {sorted(DENSE_LAYERS)}")
        if out_channels < 1 or in_channels < 1:
            raise ConfigError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        self.spec, self.preset, self.backbone = spec, preset, backbone
        self.slice_major = True
        #: training keeps only the inputs of the stem, each encoder block, each decoder level (and within
        #: it each dense layer), the pyramid and the head, and runs them again in the backward pass (:mod:`ahnet.models.recompute`): the
        #: same numbers on less memory, for about one more forward pass per step
        self.recompute = False
        self.in_channels, self.out_channels = in_channels, out_channels
        self.encoder = AHResNetEncoder(backbone, in_channels, pool_before_norm=spec.stem_pool_before_norm)

        widths = dict(zip(TAP_NAMES, stage_widths(backbone)))
        skips = ("layer3", "layer2", "layer1", "pool", "conv1")
        levels, channels = [], widths["layer4"]
        for skip in skips:
            dense = DenseBlock(DENSE_LAYERS[spec.dense_layer], widths[skip], spec.layers_per_block,
                               spec.growth_rate, spec.bottleneck_factor)
            levels.append(DecoderLevel(channels, widths[skip], dense))
            channels = dense.out_channels
        self.skips = skips
        self.decoder = nn.ModuleList(levels)
        self.pyramid = PyramidVolumetricPooling(channels, spec.pyramid_pools, spec.pyramid_padding)
        self.head = NormReLUConv(self.pyramid.out_channels, out_channels, spec.head_kernel, bias=spec.head_bias)
        self._init_weights()

    def _init_weights(self) -> None:
        """He (fan-out) initialisation as the released code, except the final projection: with
        one output channel fan-out He gives weights of std sqrt(2), so an untrained network
        outputs values of about +-10 and the heatmap L2 loss of §3.4 starts near 50 instead of
        the target's scale (peaks of 1). A small head starts every output near 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.head.conv.weight, std=0.01)

    def decoder_parameters(self) -> list[nn.Parameter]:
        """Parameters that are not transferred from 2D (trained alone in stage 1, §3.4)."""
        encoder = {id(p) for p in self.encoder.parameters()}
        return [p for p in self.parameters() if id(p) not in encoder]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, 3, self.in_channels, "AHNet")
        x, crop = pad_to_multiple(x, self.size_multiple)
        if self.slice_major:
            x = to_slice_major(x)
        run = runner(self, self.recompute)
        taps = self.encoder.features(x, run)
        h = taps["layer4"]
        # A level hears of ``run`` only when recomputing, so a level written as forward(x, skip) still runs.
        inner = () if run is direct else (run,)
        for skip, level in zip(self.skips, self.decoder):
            h = run(level, h, taps[skip], *inner)
        y = run(self.head, run(self.pyramid, h))
        y = crop_spatial(resize(y, x.shape[2:]), crop)
        return y.contiguous() if self.slice_major else y

    @fast_form_of(forward)
    def fast_form(self) -> "FastAHNet":
        """The eval-only fast form ``ahnet predict`` runs (:class:`FastAHNet`, built by every module's
        own ``fast_form``; :func:`ahnet.models.fast.optimize_for_inference` falls back to this forward
        where a module has none)."""
        return FastAHNet(self)

class FastAHNet(nn.Module):
    """Eval-only AH-Net (§3.2-3.3) equal to the given :class:`AHNet` within float rounding
    (:meth:`AHNet.fast_form`; :mod:`ahnet.models.fast`).

    Built from a model's weights (copied, batch norms folded) by the modules' own ``fast_form``
    methods; the model itself is left untouched. Takes and returns the same ``(N, C, X, Y, Z)``
    tensors as :class:`AHNet`. Keeps its large work tensors between calls (one call at a time per
    instance).
    """

    def __init__(self, model: AHNet):
        super().__init__()
        self.in_channels, self.out_channels = model.in_channels, model.out_channels
        self.size_multiple = model.size_multiple
        self.encoder = fast_form(model.encoder)
        self.skips = model.skips
        n_pools = len(model.pyramid.pools)
        self.levels = nn.ModuleList(fast_form(level, n_pools if i == len(model.decoder) - 1 else 0)
                                    for i, level in enumerate(model.decoder))
        self.pyramid = fast_form(model.pyramid)
        norm, head = _norm_conv(model.head)
        self.head = TapConv(head) if head.kernel_size[0] * head.kernel_size[1] > 1 else InPlaneConv(head)
        self.head_norm = preactivation(norm, self.head)
        self.arena = Arena()

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_norm(x))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, 3, self.in_channels, "AHNet")
        x, crop = pad_to_multiple(x, self.size_multiple)
        n, size = x.shape[0], x.shape[2:]
        budget = chunk_budget(x)
        try:
            taps = self.encoder.features(x, budget, self.arena)
            h = taps.pop("layer4")
            for skip, level in zip(self.skips, self.levels):
                h = level(h, taps.pop(skip), n, budget, self.arena)
            self.pyramid(h, budget)
            y = torch.cat([self._head(h[part]) for part in chunks(h.shape[0], h[0].numel(), budget)])
        finally:
            self.arena.reset()
        y = y.reshape(n, -1, *y.shape[1:]).permute(0, 2, 3, 4, 1)      # (N, K, X/2, Y/2, Z/2)
        y = F.interpolate(y, size=size, mode="trilinear", align_corners=False)
        return crop_spatial(y, crop)
