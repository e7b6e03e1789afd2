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
                preset: str = "paper", pretrained: str | None = None) -> nn.Module:
    """The network ``name`` for volumes with ``image_channels`` channels.

    2D networks get ``3 * image_channels`` inputs (three neighbouring slices per channel);
    ``backbone``/``preset`` apply to MC-GCN and AH-Net, ``pretrained`` (a torchvision ImageNet file)
    to MC-GCN's encoder.
    """
    if name not in MODEL_DIMS:
        raise ConfigError(f"unknown model {name!r}; choose one of {sorted(MODEL_DIMS)}")
    if pretrained and name != "mc-gcn":
        raise ConfigError("--pretrained (ImageNet weights) applies to mc-gcn only")
    if name == "mc-gcn":
        return MCGCN(out_channels, backbone, 3 * image_channels, preset, pretrained=pretrained)
    if name == "2d-unet":
        return UNet2D(3 * image_channels, out_channels)
    if name == "ahnet":
        return AHNet(out_channels, backbone, image_channels, preset)
    return UNet3D(image_channels, out_channels)


def model_meta(name: str, image_channels: int, out_channels: int, backbone: str, preset: str) -> dict:
    """What a checkpoint must record to rebuild its network (plain types only)."""
    return {"model": name, "image_channels": image_channels, "out_channels": out_channels,
            "backbone": backbone, "preset": preset, "spatial_dims": MODEL_DIMS[name]}


def model_from_meta(meta: dict) -> nn.Module:
    return build_model(meta["model"], meta["image_channels"], meta["out_channels"], meta["backbone"], meta["preset"])
