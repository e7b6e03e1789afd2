"""U-Net baselines of §4.1: a 2D U-Net on 3-slice stacks (Ronneberger 2015) and a 3D U-Net (Cicek 2016).

The paper gives their size only through Table 2 (15 conv layers each; 28,254,528 and 5,298,768
parameters). One configuration reproduces both numbers exactly, with the same rules in 2D and 3D:

* five resolution levels (four 2x max-poolings), widths doubling from ``base_width``
  (2D: 64 ... 1024, 3D: 16 ... 256);
* encoder: two conv3 - BatchNorm - ReLU per level (convs with bias);
* decoder: parameter-free (bi/tri)linear up-sampling, concatenation with the skip, then one
  conv3 - BatchNorm - ReLU per level;
* a final 1x1 conv without bias; Table 2's counts correspond to 3 output maps.

That is 10 + 4 + 1 = 15 conv layers. ``ahnet summary`` builds both with Table 2's channels.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from .padding import check_input, crop_spatial, pad_to_multiple

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_MODE = {2: "bilinear", 3: "trilinear"}


class ConvNormReLU(nn.Sequential):
    """conv3 (with bias) - BatchNorm - ReLU."""

    def __init__(self, dims: int, in_channels: int, out_channels: int):
        super().__init__(
            _CONV[dims](in_channels, out_channels, 3, padding=1),
            _NORM[dims](out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-Net in 2D or 3D; see the module docstring for the configuration.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (3 for the 2D baseline's three neighbouring slices).
        out_channels: output maps.
        base_width: channels of the first level.
        levels: resolution levels (the input size is padded to a multiple of ``2**(levels-1)``).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, base_width: int, levels: int = 5):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if levels < 2 or min(in_channels, out_channels, base_width) < 1:
            raise ConfigError("U-Net needs levels >= 2 and positive channel counts")
        self.spatial_dims, self.in_channels, self.out_channels = spatial_dims, in_channels, out_channels
        self.size_multiple = (2 ** (levels - 1),) * spatial_dims
        widths = [base_width * 2**i for i in range(levels)]
        self.encoder = nn.ModuleList()
        channels = in_channels
        for w in widths:
            self.encoder.append(nn.Sequential(ConvNormReLU(spatial_dims, channels, w), ConvNormReLU(spatial_dims, w, w)))
            channels = w
        self.decoder = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.decoder.append(ConvNormReLU(spatial_dims, channels + w, w))
            channels = w
        self.head = _CONV[spatial_dims](channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, self.in_channels, type(self).__name__)
        x, crop = pad_to_multiple(x, self.size_multiple)
        pool = F.max_pool2d if self.spatial_dims == 2 else F.max_pool3d
        skips = []
        h = x
        for i, level in enumerate(self.encoder):
            h = level(h if i == 0 else pool(h, 2))
            skips.append(h)
        for level, skip in zip(self.decoder, reversed(skips[:-1])):
            h = F.interpolate(h, size=skip.shape[2:], mode=_MODE[self.spatial_dims], align_corners=False)
            h = level(torch.cat([h, skip], dim=1))
        return crop_spatial(self.head(h), crop)


class UNet2D(UNet):
    """2D U-Net baseline on 3-slice stacks (Table 2: 64 base width, 3 in, 3 out)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base_width: int = 64, levels: int = 5):
        super().__init__(2, in_channels, out_channels, base_width, levels)


class UNet3D(UNet):
    """3D U-Net baseline (Table 2: 16 base width, 1 in, 3 out)."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_width: int = 16, levels: int = 5):
        super().__init__(3, in_channels, out_channels, base_width, levels)
