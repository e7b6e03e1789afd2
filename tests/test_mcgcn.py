"""MC-GCN (Fig. 2): shapes, GCN kernel sizes, the released preset's Table 2 count, clear errors."""

import pytest
import torch

from ahnet import ConfigError, InputShapeError
from ahnet.models import MCGCN, ResNet
from ahnet.models import StripConv2d
from ahnet.models.mcgcn import GCN
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


def _plain_reference(conv: StripConv2d) -> torch.nn.Conv2d:
    ref = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding)
    ref.load_state_dict(conv.state_dict())
    return ref


@pytest.mark.parametrize("kernel", [(63, 1), (1, 63), (31, 1), (7, 1), (1, 5)])
@pytest.mark.parametrize("size", [1, 2, 9, 10, 16, 31, 32, 33, 70])
def test_strip_convolution_equals_a_padded_conv2d_and_its_gradients(kernel, size):
    # The sizes straddle where oneDNN's AVX-512 weight gradient broke (K >= 2n - 1, n >= 10) and
    # where taps start to be dropped (n - 1 < K // 2); the reference runs without oneDNN.
    conv = StripConv2d(6, 3, kernel)
    ref = _plain_reference(conv)
    x = torch.randn(2, 6, size, size + 3)
    grad = torch.randn(2, 3, size, size + 3)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    conv(x_ours).backward(grad)
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        out_ref = ref(x_ref)
        out_ref.backward(grad)
    finally:
        torch.backends.mkldnn.enabled = enabled
    for got, want in [(conv(x), out_ref), (x_ours.grad, x_ref.grad), (conv.weight.grad, ref.weight.grad),
                      (conv.bias.grad, ref.bias.grad)]:
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_strip_convolution_keeps_conv2d_state_dict_keys():
    gcn = GCN(64, 2, 63)
    assert sorted(gcn.state_dict()) == sorted(f"conv_{b}.{p}" for b in ("l1", "l2", "r1", "r2") for p in ("weight", "bias"))
    assert gcn.conv_l1.weight.shape == (2, 64, 63, 1) and gcn.conv_r1.weight.shape == (2, 64, 1, 63)
    with pytest.raises(ConfigError, match="Kx1 or 1xK"):
        StripConv2d(1, 1, (3, 3))
