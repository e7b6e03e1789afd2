"""Multi-channel global convolutional network, MC-GCN (§3.1, Fig. 2).

A 2D ResNet encoder reads three neighbouring slices as its three RGB channels, so ImageNet weights
apply unchanged and between-slice context is fused from the first layer. A light decoder of global
convolutional network (GCN) modules and refinement blocks (Peng et al. 2017) brings the response
back to input resolution. Once trained, its encoder is transferred to the 3D AH-Net (Eq. 1-3).

GCN kernel sizes and resolution levels (``paper`` preset). §3.1 lists K = 63, 31, 15, 9, 7, 5 for
"each encoder resolution level"; ahnet reads the list in encoder order, one GCN per encoder output:

============  ==========  ======  ==
encoder tap   resolution  width   K
============  ==========  ======  ==
``conv1``     1/2         64      63
``pool``      1/4         64      31
``layer1``    1/4         256     15
``layer2``    1/8         512     9
``layer3``    1/16        1024    7
``layer4``    1/32        2048    5
============  ==========  ======  ==

(widths for ResNet-50). Large kernels thus sit on the large maps: on a 512x512 input every K spans
about a quarter of its map. The ``released`` preset uses five GCNs with K = 7 on conv1, pool,
layer2, layer3 and layer4, as the authors' code does.
"""

from __future__ import annotations

from os import PathLike
from typing import Any, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from .imagenet import imagenet_weights_file, is_imagenet
from .padding import check_input, crop_spatial, pad_to_multiple
from .presets import MCGCN_PRESETS, MCGCNSpec, resolve_preset
from .resnet import TAP_NAMES, ResNet, load_torchvision_weights, stage_widths

PathType = Union[str, "PathLike[str]"]


class StripConv2d(nn.Conv2d):
    """A Kx1 or 1xK convolution with "same" zero padding, as a GCN branch uses it.

    The result (and every gradient) is that of ``nn.Conv2d(..., padding=K // 2)``. Where the padding
    reaches across half the map or more (``2 * (K // 2) >= n`` on the kernel's n-pixel axis), it is
    computed differently, for two reasons:

    - the input is zero-padded explicitly and convolved without padding. oneDNN's AVX-512
      weight-gradient kernel corrupts the heap or hangs when a convolution's own padding reaches
      the far side of its map (K >= 2n - 1 with n >= 10: K = 63 on the 16-32 pixel conv1 map of a
      32-64 pixel patch; ``docs/troubleshooting.md``); the rule above keeps a factor of two from
      that boundary and depends on shapes only, never on the CPU;
    - taps that can only ever meet padding (more than ``n - 1`` from the centre) are dropped: their
      products are zero, so are their gradients, and a small map skips most of a large kernel.

    Smaller kernels keep oneDNN's own padding, which is faster on large maps (up to 2x measured,
    ``benchmarks/RESULTS.md``). State-dict keys and shapes are those of ``nn.Conv2d``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int]):
        if min(kernel_size) != 1 or any(k % 2 == 0 for k in kernel_size):
            raise ConfigError(f"a strip convolution is Kx1 or 1xK with K odd, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=tuple(k // 2 for k in kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = x.shape[2:]
        if all(2 * pad < size for pad, size in zip(self.padding, sizes) if pad):
            return super().forward(x)
        weight, pads = self.weight, []
        for axis, (pad, size) in enumerate(zip(self.padding, sizes)):
            unseen = max(0, pad - (size - 1))
            if unseen:
                weight = weight.narrow(2 + axis, unseen, weight.shape[2 + axis] - 2 * unseen)
            pads.append(pad - unseen)
        x = F.pad(x, (pads[1], pads[1], pads[0], pads[0]))
        return F.conv2d(x, weight, self.bias)


class GCN(nn.Module):
    """Global convolution: a KxK kernel as two branches, Kx1 then 1xK and 1xK then Kx1, summed."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"GCN kernel sizes must be odd and positive, got {kernel_size}")
        k = kernel_size
        self.conv_l1 = StripConv2d(in_channels, out_channels, (k, 1))
        self.conv_l2 = StripConv2d(out_channels, out_channels, (1, k))
        self.conv_r1 = StripConv2d(in_channels, out_channels, (1, k))
        self.conv_r2 = StripConv2d(out_channels, out_channels, (k, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_l2(self.conv_l1(x)) + self.conv_r2(self.conv_r1(x))


class RefinementBlock(nn.Module):
    """Residual refinement: two 3x3 convs with a ReLU between, plus the input (boundary refinement).

    ``shared_norm=True`` adds one BatchNorm+ReLU before each conv, the same BatchNorm both times,
    as the released code does.
    """

    def __init__(self, channels: int, shared_norm: bool = False):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels) if shared_norm else None
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn is None:
            return x + self.conv2(F.relu(self.conv1(x)))
        h = self.conv1(F.relu(self.bn(x)))
        return x + self.conv2(F.relu(self.bn(h)))


class UpModule(nn.Module):
    """Optional 1x1 conv, then bilinear up-sampling to a given size."""

    def __init__(self, channels: int, conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1) if conv else None

    def forward(self, x: torch.Tensor, size: torch.Size | tuple[int, ...]) -> torch.Tensor:
        if self.conv is not None:
            x = self.conv(x)
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class MCGCN(nn.Module):
    """MC-GCN (§3.1, Fig. 2): ResNet encoder on 3-slice stacks, GCN + refinement decoder.

    Args:
        out_channels: output maps (segmentation classes, or 1 for a regression heatmap); every GCN
            module produces this many maps (§3.1).
        backbone: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"`` (the paper's).
        in_channels: input channels, 3 = three neighbouring slices (§3.1).
        preset: ``"paper"`` (default) or ``"released"``; see :mod:`ahnet.models.presets`.
        pretrained: a local torchvision-format ImageNet file for the encoder, or ``"imagenet"`` for
            torchvision's ImageNet weights from torch hub's cache (downloaded once if absent; see
            :mod:`ahnet.models.imagenet`).
        **overrides: fields of :class:`~ahnet.models.presets.MCGCNSpec` to change.

    Input ``(N, in_channels, X, Y)`` of any size; output ``(N, out_channels, X, Y)``. Inputs are
    zero-padded to a multiple of 32 internally and the output cropped back.
    """

    size_multiple = (32, 32)

    def __init__(
        self,
        out_channels: int = 1,
        backbone: str = "resnet50",
        in_channels: int = 3,
        preset: str = "paper",
        pretrained: PathType | None = None,
        **overrides: Any,
    ):
        super().__init__()
        spec: MCGCNSpec = resolve_preset(MCGCN_PRESETS, preset, overrides, "MC-GCN")
        if out_channels < 1:
            raise ConfigError(f"out_channels must be >= 1, got {out_channels}")
        if len(spec.gcn_taps) != len(spec.gcn_kernels) or not spec.gcn_taps:
            raise ConfigError("MC-GCN needs one GCN kernel size per tapped encoder output")
        if any(t not in TAP_NAMES for t in spec.gcn_taps):
            raise ConfigError(f"GCN taps must be among {TAP_NAMES}, got {spec.gcn_taps}")
        self.spec, self.preset, self.in_channels, self.out_channels = spec, preset, in_channels, out_channels
        self.encoder = ResNet(backbone, in_channels=in_channels)
        if is_imagenet(pretrained):
            pretrained = imagenet_weights_file(backbone)
        if pretrained is not None:
            load_torchvision_weights(self.encoder, pretrained)
        widths = dict(zip(TAP_NAMES, stage_widths(backbone)))
        n = len(spec.gcn_taps)
        self.gcn = nn.ModuleList(
            GCN(widths[t], out_channels, k) for t, k in zip(spec.gcn_taps, spec.gcn_kernels)
        )
        self.refine_gcn = nn.ModuleList(RefinementBlock(out_channels, spec.refine_shared_norm) for _ in range(n))
        self.refine_sum = nn.ModuleList(RefinementBlock(out_channels, spec.refine_shared_norm) for _ in range(n - 1))
        self.up = nn.ModuleList(UpModule(out_channels, spec.up_conv) for _ in range(n))
        self.refine_out = RefinementBlock(out_channels, spec.refine_shared_norm) if spec.output_refine else None
        if spec.unused_conv:
            self.unused_conv = nn.Conv2d(256, 64, 1)
            self.unused_conv.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, 2, self.in_channels, "MCGCN")
        x, crop = pad_to_multiple(x, self.size_multiple)
        taps = self.encoder.features(x)
        maps = [taps[name] for name in self.spec.gcn_taps]
        # Deepest level first; each shallower level adds its own refined GCN response (Fig. 2).
        y = self.refine_gcn[-1](self.gcn[-1](maps[-1]))
        for i in reversed(range(len(maps) - 1)):
            g = self.refine_gcn[i](self.gcn[i](maps[i]))
            y = self.refine_sum[i](g + self.up[i + 1](y, maps[i].shape[2:]))
        y = self.up[0](y, x.shape[2:])
        if self.refine_out is not None:
            y = self.refine_out(y)
        return crop_spatial(y, crop)
