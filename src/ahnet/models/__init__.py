"""The paper's networks: MC-GCN (Fig. 2), AH-Net (Fig. 3), the 2D-to-3D transfer (Fig. 4, Eq. 1-3)
and the U-Net baselines. Tensors are ``(N, C, X, Y, Z)``, Z the thick-slice axis."""

from .ahnet import AHNet
from .mcgcn import MCGCN, StripConv2d
from .presets import AHNET_PRESETS, MCGCN_PRESETS, AHNetSpec, MCGCNSpec
from .resnet import ResNet, load_torchvision_weights, resnet18, resnet34, resnet50
from .transfer import transfer_2d_to_3d
from .unet import UNet2D, UNet3D

__all__ = [
    "AHNET_PRESETS",
    "AHNet",
    "AHNetSpec",
    "MCGCN",
    "MCGCNSpec",
    "MCGCN_PRESETS",
    "ResNet",
    "StripConv2d",
    "UNet2D",
    "UNet3D",
    "load_torchvision_weights",
    "resnet18",
    "resnet34",
    "resnet50",
    "transfer_2d_to_3d",
]
