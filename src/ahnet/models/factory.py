"""Build any of the compared networks by name, so one trainer trains them all like for like."""

from __future__ import annotations

import torch.nn as nn

from ..errors import ConfigError
from .ahnet import AHNet
from .mcgcn import MCGCN
from .unet import UNet2D, UNet3D

#: Network name -> spatial dimensions of its input (2D networks read 3-slice stacks).
MODEL_DIMS = {"mc-gcn": 2, "2d-unet": 2, "ahnet": 3, "3d-unet": 3}


def build_model(name: str, image_channels: int, out_channels: int, backbone: str = "resnet50",
                preset: str = "paper", pretrained: str | None = None, options: dict | None = None) -> nn.Module:
    """The network ``name`` for volumes with ``image_channels`` channels.

    2D networks get ``3 * image_channels`` inputs (three neighbouring slices per channel);
    ``backbone``/``preset`` apply to MC-GCN and AH-Net, ``pretrained`` (a torchvision ImageNet file,
    or ``"imagenet"`` for torchvision's weights through torch hub's cache) to MC-GCN's encoder.
    ``options`` override fields of the preset (``MCGCNSpec`` / ``AHNetSpec``),
    e.g. ``{"pyramid_pools": []}`` for the ablations.
    """
    if name not in MODEL_DIMS:
        raise ConfigError(f"unknown model {name!r}; choose one of {sorted(MODEL_DIMS)}")
    if pretrained and name != "mc-gcn":
        raise ConfigError("--pretrained (ImageNet weights) applies to mc-gcn only")
    options = _spec_values(options or {})
    if options and name not in ("mc-gcn", "ahnet"):
        raise ConfigError(f"structure options {sorted(options)} apply to mc-gcn and ahnet only, not {name}")
    if name == "mc-gcn":
        return MCGCN(out_channels, backbone, 3 * image_channels, preset, pretrained=pretrained, **options)
    if name == "2d-unet":
        return UNet2D(3 * image_channels, out_channels)
    if name == "ahnet":
        return AHNet(out_channels, backbone, image_channels, preset, **options)
    return UNet3D(image_channels, out_channels)


def _spec_values(options: dict) -> dict:
    """JSON gives lists where the specs hold tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def model_meta(name: str, image_channels: int, out_channels: int, backbone: str, preset: str,
               options: dict | None = None) -> dict:
    """What a checkpoint must record to rebuild its network (plain types only)."""
    return {"model": name, "image_channels": image_channels, "out_channels": out_channels,
            "backbone": backbone, "preset": preset, "spatial_dims": MODEL_DIMS[name],
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in (options or {}).items()}}


def model_from_meta(meta: dict) -> nn.Module:
    return build_model(meta["model"], meta["image_channels"], meta["out_channels"], meta["backbone"], meta["preset"],
                       options=meta.get("options"))
