"""AH-Net (Fig. 3): structure, any input size, gradients, clear errors."""

import pytest
import torch
import torch.nn as nn

from ahnet import ConfigError, InputShapeError
from ahnet.models import AHNet
from ahnet.models.ahnet import AHDownsample, PyramidVolumetricPooling
from ahnet.summary import count_conv_layers, count_parameters


@pytest.mark.parametrize("preset", ["paper", "released"])
@pytest.mark.parametrize("size", [(96, 96, 32), (128, 128, 48), (48, 48, 32), (37, 50, 7), (1, 1, 1)])
@torch.no_grad()
def test_any_size_gives_output_of_input_size(preset, size):
    # 96x96x32, 128x128x48 and 48x48x32 crash the known ports with cryptic RuntimeErrors.
    model = AHNet(out_channels=2, backbone="resnet50", preset=preset).eval()
    assert model(torch.randn(1, 1, *size)).shape == (1, 2, *size)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34"])
@pytest.mark.parametrize("out_channels", [1, 3])
@torch.no_grad()
def test_batches_backbones_and_output_channels(backbone, out_channels):
    model = AHNet(out_channels=out_channels, backbone=backbone, in_channels=2).eval()
    assert model(torch.randn(3, 2, 64, 40, 16)).shape == (3, out_channels, 64, 40, 16)


@torch.no_grad()
def test_padding_is_invisible_at_valid_sizes_and_crops_otherwise():
    model = AHNet(backbone="resnet18").eval()
    x = torch.randn(1, 1, 50, 64, 20)
    padded = torch.nn.functional.pad(x, (6, 6, 0, 0, 7, 7))  # to 64x64x32, centred
    full = model(padded)
    assert torch.allclose(model(x), full[..., 7:57, :, 6:26], atol=1e-5)


def test_released_preset_reproduces_table2():
    with torch.device("meta"):
        model = AHNet(out_channels=1, preset="released")
    assert count_parameters(model) == 27_085_500
    assert count_conv_layers(model) == 123


def test_architecture_follows_section_3_2():
    model = AHNet(backbone="resnet50")
    enc = model.encoder
    assert (enc.conv1.kernel_size, enc.conv1.stride) == ((7, 7, 3), (2, 2, 1))
    assert (enc.pool_z.kernel_size, enc.pool_z.stride) == ((1, 1, 2), (1, 1, 2))
    assert (enc.maxpool.kernel_size, enc.maxpool.stride) == (3, 2)
    for stage in (enc.layer2, enc.layer3, enc.layer4):
        down = stage[0].downsample
        assert isinstance(down, AHDownsample)
        assert (down.conv.kernel_size, down.conv.stride) == ((1, 1, 1), (2, 2, 1))
        assert (down.pool.kernel_size, down.pool.stride) == ((1, 1, 2), (1, 1, 2))
    kernels = {m.kernel_size for m in enc.modules() if isinstance(m, nn.Conv3d)} - {(7, 7, 3)}
    assert kernels == {(1, 1, 1), (3, 3, 1)}  # the transferred encoder convolves slice by slice
    decoder_kernels = {m.kernel_size for m in model.decoder.modules() if isinstance(m, nn.Conv3d)}
    assert decoder_kernels == {(1, 1, 1), (3, 3, 1), (1, 1, 3)}
    assert model.pyramid.pools == (64, 32, 16, 8)
    assert model.head.conv.kernel_size == (1, 1, 1)
    assert len(model.decoder) == 5 and all(len(level.dense) == 3 for level in model.decoder)


@torch.no_grad()
def test_pyramid_pooling_equals_plain_pooling_where_sizes_divide():
    pvp = PyramidVolumetricPooling(4, (16, 8))
    x = torch.randn(1, 4, 32, 48, 3)
    out = pvp(x)
    assert out.shape == (1, 6, 32, 48, 3)
    plain = nn.functional.max_pool3d(x, (16, 16, 1), (16, 16, 1))
    expected = nn.functional.interpolate(pvp.proj[0](plain), size=(32, 48, 3), mode="trilinear")
    assert torch.allclose(out[:, :1], expected, atol=1e-6)
    assert torch.equal(out[:, 2:], x)


def test_gradients_reach_every_trainable_parameter():
    model = AHNet(out_channels=2, backbone="resnet18").train()
    model(torch.randn(2, 1, 64, 64, 32)).square().mean().backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert dead == []


def test_decoder_parameters_exclude_the_encoder():
    model = AHNet(backbone="resnet18")
    decoder = {id(p) for p in model.decoder_parameters()}
    assert not decoder & {id(p) for p in model.encoder.parameters()}
    assert len(decoder) + len(list(model.encoder.parameters())) == len(list(model.parameters()))


@pytest.mark.parametrize("x,match", [
    (torch.randn(1, 1, 32, 32), "5D tensor"),
    (torch.randn(1, 2, 32, 32, 32), "1 input channel"),
    (torch.zeros(1, 1, 32, 32, 32, dtype=torch.int64), "floating-point"),
    (torch.randn(1, 1, 0, 32, 32), "empty"),
])
def test_bad_inputs_are_clear_errors(x, match):
    with pytest.raises(InputShapeError, match=match):
        AHNet(backbone="resnet18")(x)


@pytest.mark.parametrize("kwargs,match", [
    ({"backbone": "resnet101"}, "unknown backbone"),
    ({"preset": "fast"}, "unknown AH-Net preset"),
    ({"growth": 12}, "unknown AH-Net option"),
    ({"dense_layer": "iso"}, "unknown dense_layer"),
    ({"out_channels": 0}, "must be >= 1"),
])
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        AHNet(**kwargs)


def test_untrained_network_outputs_start_near_zero():
    """The final projection starts small, so a heatmap regression (targets peaking at 1) starts
    near its trivial solution instead of an L2 loss of about 50."""
    model = AHNet(in_channels=1, out_channels=1, backbone="resnet18").train()  # as in the first step
    with torch.no_grad():
        y = model(torch.randn(2, 1, 32, 32, 8))
    assert y.abs().max() < 1.0


def _saved_elements(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The output, and the elements autograd keeps for the backward pass of ``model(x)``."""
    kept = []

    def pack(t):
        kept.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    return out, sum(kept)


@pytest.mark.parametrize("preset", ["paper", "released"])
def test_recomputation_is_the_same_step_keeping_less(preset):
    import copy

    plain = AHNet(out_channels=2, backbone="resnet18", preset=preset).double().train()
    lean = copy.deepcopy(plain)
    lean.recompute = True
    x = torch.randn(2, 1, 40, 36, 20, dtype=torch.float64)
    out_plain, kept_plain = _saved_elements(plain, x)
    out_lean, kept_lean = _saved_elements(lean, x)
    assert torch.equal(out_plain, out_lean)
    assert kept_lean < 0.25 * kept_plain  # only the units' inputs
    (out_plain.square().mean()).backward()
    (out_lean.square().mean()).backward()
    for (name, p), q in zip(plain.named_parameters(), lean.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12, msg=name)
    for (name, b), c in zip(plain.named_buffers(), lean.buffers()):  # each batch counted once
        assert torch.equal(b, c), name
    lean.eval()
    with torch.no_grad():
        torch.testing.assert_close(lean(x), plain.eval()(x), rtol=0, atol=0)


def test_a_decoder_level_written_without_run_still_trains():
    # A level overridden with the signature forward(x, skip) (before recomputation existed) trains as
    # before: the network passes ``run`` to its levels only when recomputing.
    from ahnet.models.ahnet import DecoderLevel

    class Doubled(DecoderLevel):
        def forward(self, x, skip):
            return 2 * super().forward(x, skip)

    model = AHNet(out_channels=2, backbone="resnet18").train()
    x = torch.randn(2, 1, 64, 64, 8)
    reference = model(x)
    model.decoder[0].__class__ = Doubled
    changed = model(x)
    changed.square().mean().backward()
    assert not torch.allclose(changed, reference)
    assert model.decoder[0].project.conv.weight.grad is not None
