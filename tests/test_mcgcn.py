"""MC-GCN (Fig. 2): shapes, GCN kernel sizes, the released preset's Table 2 count, clear errors."""

import pytest
import torch

from ahnet import ConfigError, InputShapeError
from ahnet.models import MCGCN, ResNet
from ahnet.summary import count_conv_layers, count_parameters


@pytest.mark.parametrize("preset", ["paper", "released"])
@pytest.mark.parametrize("size", [(64, 64), (37, 50), (128, 96), (5, 3)])
@torch.no_grad()
def test_output_at_input_resolution(preset, size):
    model = MCGCN(out_channels=3, backbone="resnet18", preset=preset).eval()
    assert model(torch.randn(2, 3, *size)).shape == (2, 3, *size)


@pytest.mark.parametrize("backbone", ["resnet34", "resnet50"])
@torch.no_grad()
def test_backbones(backbone):
    model = MCGCN(out_channels=1, backbone=backbone).eval()
    assert model(torch.randn(1, 3, 96, 64)).shape == (1, 1, 96, 64)


def test_paper_gcn_kernels_per_encoder_level():
    model = MCGCN(backbone="resnet50")
    got = [(tap, gcn.conv_l1.kernel_size, gcn.conv_r1.kernel_size, gcn.conv_l1.in_channels)
           for tap, gcn in zip(model.spec.gcn_taps, model.gcn)]
    assert got == [("conv1", (63, 1), (1, 63), 64), ("pool", (31, 1), (1, 31), 64),
                   ("layer1", (15, 1), (1, 15), 256), ("layer2", (9, 1), (1, 9), 512),
                   ("layer3", (7, 1), (1, 7), 1024), ("layer4", (5, 1), (1, 5), 2048)]
    assert all(up.conv is not None and up.conv.kernel_size == (1, 1) for up in model.up)
    assert model.refine_out is None


def test_released_preset_reproduces_table2():
    with torch.device("meta"):
        model = MCGCN(out_channels=1, preset="released")
    assert count_parameters(model) == 23_576_758
    assert count_conv_layers(model) == 94
    assert not model.unused_conv.weight.requires_grad  # counted by Table 2, never trained


def test_gradients_reach_every_trainable_parameter():
    model = MCGCN(out_channels=2, backbone="resnet18").train()
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert dead == []


def test_pretrained_encoder(tmp_path):
    source = ResNet("resnet18", num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "imagenet.pth")
    model = MCGCN(backbone="resnet18", pretrained=tmp_path / "imagenet.pth")
    assert torch.equal(model.encoder.conv1.weight, source.conv1.weight)


def test_bad_inputs_and_arguments_are_clear_errors():
    model = MCGCN(backbone="resnet18")
    with pytest.raises(InputShapeError, match="4D tensor"):
        model(torch.randn(1, 3, 32, 32, 8))
    with pytest.raises(InputShapeError, match="3 input channel"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ConfigError, match="odd"):
        MCGCN(backbone="resnet18", gcn_kernels=(63, 31, 15, 9, 7, 4))
    with pytest.raises(ConfigError, match="one GCN kernel size per"):
        MCGCN(backbone="resnet18", gcn_kernels=(7, 7))
    with pytest.raises(ConfigError, match="unknown MC-GCN preset"):
        MCGCN(preset="fast")
