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
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError
from .layout import (SliceBatchNorm3d, SliceConv3d, SliceMaxPool3d, cat_channels, max_pool, resize,
                     to_slice_major)
from .padding import check_input, crop_spatial, pad_to_multiple
from .presets import AHNET_PRESETS, AHNetSpec, resolve_preset
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

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encoder outputs named as the 2D ResNet's (``resnet.TAP_NAMES``)."""
        taps = {"conv1": self.stem(x)}
        taps["pool"] = self.maxpool(taps["conv1"])
        h = taps["pool"]
        for name in TAP_NAMES[2:]:
            h = getattr(self, name)(h)
            taps[name] = h
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

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        h = self.project(x)
        return self.dense(resize(h, skip.shape[2:]) + skip)


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
        taps = self.encoder.features(x)
        h = taps["layer4"]
        for skip, level in zip(self.skips, self.decoder):
            h = level(h, taps[skip])
        y = self.head(self.pyramid(h))
        y = crop_spatial(resize(y, x.shape[2:]), crop)
        return y.contiguous() if self.slice_major else y
