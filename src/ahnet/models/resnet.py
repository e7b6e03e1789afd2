"""ResNet 2D backbone (He et al. 2016) with torchvision's exact module names.

The MC-GCN encoder (§3.1) is a plain ResNet on three neighbouring slices taken as RGB channels.
Its ``state_dict`` keys and shapes equal torchvision's ``resnet18/34/50``, so an ImageNet checkpoint
saved by torchvision (``torch.save(model.state_dict(), path)``) loads with
``resnet50(pretrained=path)``. Nothing is ever downloaded and torchvision is not needed.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Callable, Union

import torch
import torch.nn as nn

from ..errors import CheckpointError, ConfigError
from ..torchfile import describe_payload, why_unreadable

PathType = Union[str, "PathLike[str]"]

#: Names of the encoder outputs that the decoders tap, shallow to deep (2D and 3D alike):
#: ``conv1`` after the stem's ReLU (1/2), ``pool`` after the stem's max pooling (1/4), then the four
#: residual stages (1/4, 1/8, 1/16, 1/32 in-plane).
TAP_NAMES = ("conv1", "pool", "layer1", "layer2", "layer3", "layer4")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1
    #: (conv, norm) pairs that forward applies as ``norm(conv(x))``: folded for inference (``ahnet.models.fast``)
    conv_norm_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 bottleneck with the stride on the 3x3 (torchvision's ResNet v1.5)."""

    expansion = 4
    #: (conv, norm) pairs that forward applies as ``norm(conv(x))``: folded for inference (``ahnet.models.fast``)
    conv_norm_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


#: Block type and blocks per stage of each supported depth.
RESNET_LAYOUTS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


def stage_widths(backbone: str) -> tuple[int, ...]:
    """Channels of the taps in :data:`TAP_NAMES` order for a backbone name."""
    block, _ = _layout(backbone)
    return (64, 64) + tuple(64 * 2**i * block.expansion for i in range(4))


def _layout(backbone: str) -> tuple[type[nn.Module], tuple[int, int, int, int]]:
    if backbone not in RESNET_LAYOUTS:
        raise ConfigError(f"unknown backbone {backbone!r}; choose one of {sorted(RESNET_LAYOUTS)}")
    return RESNET_LAYOUTS[backbone]


class ResNet(nn.Module):
    """torchvision-compatible ResNet; ``num_classes=None`` drops the classifier (an encoder).

    Args:
        backbone: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        in_channels: input channels; 3 for three neighbouring slices (§3.1).
        num_classes: size of the ``fc`` classifier, or ``None`` for an encoder without one.
    """

    #: (conv, norm) pairs that forward applies as ``norm(conv(x))``: folded for inference (``ahnet.models.fast``)
    conv_norm_pairs = (("conv1", "bn1"),)

    def __init__(self, backbone: str = "resnet50", in_channels: int = 3, num_classes: int | None = None):
        super().__init__()
        block, layers = _layout(backbone)
        self.backbone = backbone
        self.in_channels = in_channels
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The encoder outputs named in :data:`TAP_NAMES`."""
        taps = {"conv1": self.relu(self.bn1(self.conv1(x)))}
        taps["pool"] = self.maxpool(taps["conv1"])
        h = taps["pool"]
        for name in TAP_NAMES[2:]:
            h = getattr(self, name)(h)
            taps[name] = h
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores with a classifier, else the deepest feature map (``layer4``)."""
        h = self.features(x)["layer4"]
        if not hasattr(self, "fc"):
            return h
        return self.fc(torch.flatten(self.avgpool(h), 1))


def load_torchvision_weights(model: ResNet, path: PathType) -> None:
    """Load a torchvision-format ResNet checkpoint (a plain ``state_dict``) into ``model``.

    The ``fc`` classifier is skipped when ``model`` has none. The file is read with
    ``weights_only=True``, so a checkpoint cannot run code. Every other key must be present with
    the same shape; anything else raises :class:`CheckpointError` naming the file and the keys.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file (expected a torchvision ResNet state_dict)") from None
    except Exception as err:  # torch raises many types for corrupt or non-tensor files
        raise CheckpointError(f"{path}: not a readable PyTorch weight file: {why_unreadable(Path(path), err)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state_dict (a dict of tensors) as torchvision saves it, "
                              f"found {describe_payload(state)}")
    own = model.state_dict()
    if not hasattr(model, "fc"):
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing = sorted(set(own) - set(state) - _optional_keys(own))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: not a torchvision {model.backbone} checkpoint: "
            f"{len(missing)} missing key(s) {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}"
        )
    wrong = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        key, got, want = wrong[0]
        raise CheckpointError(
            f"{path}: {len(wrong)} tensor(s) of the wrong shape for {model.backbone} with "
            f"{model.in_channels} input channel(s), e.g. {key}: file {got}, network {want}"
        )
    model.load_state_dict(state, strict=False)


def _optional_keys(state: dict[str, torch.Tensor]) -> set[str]:
    # Old torchvision files predate BatchNorm's num_batches_tracked counter.
    return {k for k in state if k.endswith("num_batches_tracked")}


def _factory(backbone: str) -> Callable[..., ResNet]:
    def build(pretrained: PathType | None = None, in_channels: int = 3, num_classes: int | None = None) -> ResNet:
        model = ResNet(backbone, in_channels=in_channels, num_classes=num_classes)
        if pretrained is not None:
            load_torchvision_weights(model, pretrained)
        return model

    build.__name__ = backbone
    build.__doc__ = (
        f"A {backbone} (torchvision layout). ``pretrained`` is a local torchvision-format weight file "
        "(e.g. ImageNet); nothing is downloaded."
    )
    return build


resnet18 = _factory("resnet18")
resnet34 = _factory("resnet34")
resnet50 = _factory("resnet50")
