"""Fig. 4 / Eq. 1-3 proven numerically: the transferred 3D encoder computes the 2D encoder's
function slice by slice (eval mode, batch norms with random statistics and negative gammas)."""

import pytest
import torch
import torch.nn.functional as F

from ahnet import TransferError
from ahnet.models import MCGCN, AHNet, ResNet, transfer_2d_to_3d
from ahnet.models.transfer import stem_kernel_2d_to_3d

from conftest import randomize_batchnorm

ATOL = 1e-4


def transferred_pair(backbone="resnet18", preset="paper", in_channels=1):
    net2d = randomize_batchnorm(MCGCN(out_channels=2, backbone=backbone, in_channels=3 * in_channels)).eval()
    net3d = transfer_2d_to_3d(net2d, AHNet(out_channels=2, backbone=backbone, preset=preset,
                                           in_channels=in_channels)).eval()
    return net2d.encoder, net3d.encoder


def slice_stacks(volume: torch.Tensor) -> torch.Tensor:
    """(1, 1, X, Y, Z) -> (Z, 3, X, Y): slices z-1, z, z+1 as channels, zeros beyond the ends."""
    padded = F.pad(volume, (1, 1))[0, 0]
    return torch.stack([padded[..., z:z + 3].permute(2, 0, 1) for z in range(volume.shape[-1])])


def per_slice(module, volume: torch.Tensor) -> torch.Tensor:
    """Apply a 2D module to every z slice of (N, C, X, Y, Z) and restack along z."""
    n, _, _, _, z = volume.shape
    slices = volume.permute(0, 4, 1, 2, 3).flatten(0, 1)
    out = module(slices)
    return out.unflatten(0, (n, z)).permute(0, 2, 3, 4, 1)


def test_eq1_stem_kernel_layout():
    w2d = torch.randn(64, 3, 7, 7)
    w3d = stem_kernel_2d_to_3d(w2d)
    assert w3d.shape == (64, 1, 7, 7, 3)
    for k in range(3):
        assert torch.equal(w3d[:, 0, :, :, k], w2d[:, k])


@pytest.mark.parametrize("preset", ["paper", "released"])
@torch.no_grad()
def test_stem_conv_bn_relu_equals_2d_stem_on_each_3_slice_stack(preset):
    enc2d, enc3d = transferred_pair(preset=preset)
    volume = torch.randn(1, 1, 40, 36, 9)
    out3d = enc3d.relu(enc3d.bn1(enc3d.conv1(volume)))
    stacks = slice_stacks(volume)
    out2d = enc2d.relu(enc2d.bn1(enc2d.conv1(stacks)))  # (Z, 64, X/2, Y/2)
    assert torch.allclose(out3d[0].permute(3, 0, 1, 2), out2d, atol=ATOL)


@torch.no_grad()
def test_whole_paper_stem_equals_2d_stem_then_z_pooling():
    enc2d, enc3d = transferred_pair(preset="paper")
    volume = torch.randn(1, 1, 32, 32, 8)
    stem2d = enc2d.relu(enc2d.bn1(enc2d.conv1(slice_stacks(volume))))  # per slice
    stack = stem2d.permute(1, 2, 3, 0).unsqueeze(0)  # (1, 64, X/2, Y/2, Z)
    expected = F.max_pool3d(F.max_pool3d(stack, (1, 1, 2)), 3, 2, 1)
    assert torch.allclose(enc3d.maxpool(enc3d.stem(volume)), expected, atol=ATOL)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
@torch.no_grad()
def test_every_ah_resnet_block_equals_its_2d_block_slice_by_slice(backbone):
    enc2d, enc3d = transferred_pair(backbone)
    width = 64
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for block2d, block3d in zip(getattr(enc2d, stage), getattr(enc3d, stage)):
            # Pairs of identical slices: the AH-Downsample's 1x1x2 max pooling then keeps each slice.
            x = torch.randn(1, width, 8, 6, 3).repeat_interleave(2, dim=4)
            out3d = block3d(x)
            pooled = out3d.shape[-1] < x.shape[-1]
            expected = per_slice(block2d, x[..., ::2] if pooled else x)
            assert out3d.shape == expected.shape
            assert torch.allclose(out3d, expected, atol=ATOL), f"{stage} differs"
            width = out3d.shape[1]


@torch.no_grad()
def test_whole_residual_encoder_equals_2d_on_slabs():
    enc2d, enc3d = transferred_pair("resnet18")
    # Three z-pooling stages: slabs of 8 identical slices come out as one slice each.
    slab = torch.randn(1, 64, 64, 64, 2).repeat_interleave(8, dim=4)
    h3d, h2d = slab, slab[..., ::8]
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        h3d = getattr(enc3d, stage)(h3d)
    h2d = per_slice(torch.nn.Sequential(enc2d.layer1, enc2d.layer2, enc2d.layer3, enc2d.layer4), h2d)
    assert h3d.shape == h2d.shape == (1, 512, 8, 8, 2)
    assert torch.allclose(h3d, h2d, atol=ATOL)


def test_every_tensor_is_copied_including_running_statistics():
    enc2d, enc3d = transferred_pair("resnet50")
    state3d = enc3d.state_dict()
    for key, value in enc2d.state_dict().items():
        key3d = key.replace(".downsample.0.", ".downsample.conv.").replace(".downsample.1.", ".downsample.bn.")
        if key == "conv1.weight":
            value = stem_kernel_2d_to_3d(value)
        elif value.dim() == 4:
            value = value.unsqueeze(-1)
        assert torch.equal(state3d[key3d], value), key
    assert len(state3d) == len(enc2d.state_dict())


def test_decoder_is_untouched_and_result_returned():
    net2d = MCGCN(backbone="resnet18")
    net3d = AHNet(backbone="resnet18")
    before = {k: v.clone() for k, v in net3d.state_dict().items() if not k.startswith("encoder.")}
    assert transfer_2d_to_3d(net2d, net3d) is net3d
    after = net3d.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_transfer_from_imagenet_resnet_with_classifier():
    resnet = randomize_batchnorm(ResNet("resnet18", num_classes=1000))
    net3d = transfer_2d_to_3d(resnet, AHNet(backbone="resnet18"))
    assert torch.equal(net3d.encoder.bn1.running_var, resnet.bn1.running_var)


@torch.no_grad()
def test_multichannel_stem_is_channel_major():
    enc2d, enc3d = transferred_pair(in_channels=2)
    volume = torch.randn(1, 2, 16, 16, 5)
    stacks = torch.cat([slice_stacks(volume[:, c:c + 1]) for c in range(2)], dim=1)  # (Z, 6, X, Y)
    out3d = enc3d.conv1(volume)[0].permute(3, 0, 1, 2)
    assert torch.allclose(out3d, enc2d.conv1(stacks), atol=ATOL)


def test_mismatched_networks_are_clear_errors():
    with pytest.raises(TransferError, match="backbones differ"):
        transfer_2d_to_3d(MCGCN(backbone="resnet18"), AHNet(backbone="resnet34"))
    with pytest.raises(TransferError, match="3 neighbouring slices"):
        transfer_2d_to_3d(MCGCN(backbone="resnet18", in_channels=3), AHNet(backbone="resnet18", in_channels=2))
    with pytest.raises(TransferError, match="MCGCN or a ResNet"):
        transfer_2d_to_3d(AHNet(backbone="resnet18"), AHNet(backbone="resnet18"))
    with pytest.raises(TransferError, match="must be an AHNet"):
        transfer_2d_to_3d(MCGCN(backbone="resnet18"), MCGCN(backbone="resnet18"))
