"""Our AH-Net carried into MONAI's AHNet (issue 12c): same function, or a ConfigError naming why not."""

import pytest
import torch
import torch.nn.functional as F

import ahnet.models.ahnet as ahnet_module
from ahnet import ConfigError
from ahnet.models import MCGCN, AHNet
from ahnet.models.monai_interop import check_mappable, check_size, size_multiple, to_monai_ahnet

from conftest import randomize_batchnorm

pytestmark = pytest.mark.timeout(120)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def aligned_resize(x: torch.Tensor, size) -> torch.Tensor:
    """Our resizing with MONAI's corner convention, so the two networks can be compared whole."""
    size = tuple(int(s) for s in size)
    return x if tuple(x.shape[2:]) == size else F.interpolate(x, size=size, mode="trilinear", align_corners=True)


def record(modules: dict, taps: dict, what: str = "output") -> None:
    """Store each module's output (or first input) in ``taps`` under its key when it runs."""
    for key, module in modules.items():
        def hook(mod, inputs, output, key=key):
            taps[key] = (inputs[0] if what == "input" else output).clone()
        module.register_forward_hook(hook)


def random_network(**kwargs) -> AHNet:
    model = randomize_batchnorm(AHNet(preset="released", **kwargs)).eval()
    with torch.no_grad():  # a head of the other weights' scale, so that the output is not ~0
        model.head.conv.weight.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("kwargs, size", [
    ({"out_channels": 3}, (128, 256, 32)),                                           # the released preset
    ({"out_channels": 2, "in_channels": 2, "pyramid_pools": (16, 8)}, (96, 64, 32)),  # two pyramid levels
])
def test_monai_computes_our_network_up_to_the_corner_convention(kwargs, size, monkeypatch):
    """Batch 2, random batch-norm statistics, eval mode, a size MONAI pools as we do."""
    torch.manual_seed(1)
    ours = random_network(**kwargs)
    ours.slice_major = False
    monai = to_monai_ahnet(ours, allow_aligned_corners=True).eval()
    assert sum(p.numel() for p in monai.parameters()) == sum(p.numel() for p in ours.parameters())
    x = torch.randn(2, ours.in_channels, *size)
    mine, theirs = {}, {}
    enc = ours.encoder
    record({"conv1": enc.maxpool}, mine, "input")
    record({"pool": enc.maxpool, **{f"layer{i}": getattr(enc, f"layer{i}") for i in range(1, 5)}}, mine)
    record({"conv1": monai.maxpool}, theirs, "input")
    record({"pool": monai.maxpool, **{f"layer{i}": getattr(monai, f"layer{i}") for i in range(1, 5)}}, theirs)
    with torch.no_grad():
        y_monai = monai(x)
        y_ours = ours(x) if "pyramid_pools" in kwargs else None  # the cheaper case shows the difference
        monkeypatch.setattr(ahnet_module, "resize", aligned_resize)
        y_aligned = ours(x)
    # The encoders (no interpolation) are the same function; so is the whole network once our
    # resizing aligns corners as MONAI's does.
    for key in mine:
        assert relative(theirs[key], mine[key]) < 1e-4, key
    assert y_monai.shape == y_aligned.shape == (2, ours.out_channels, *size)
    assert relative(y_monai, y_aligned) < 1e-4
    if y_ours is not None:  # what the corner convention alone changes: far above rounding, hence the opt-in
        assert relative(y_monai, y_ours) > 1e-3


def test_the_corner_convention_needs_an_explicit_opt_in():
    with pytest.raises(ConfigError, match="aligns corners"):
        check_mappable(AHNet(preset="released"))
    assert check_mappable(AHNet(preset="released"), allow_aligned_corners=True) == 4


@pytest.mark.parametrize("build, messages", [
    (lambda: AHNet(backbone="resnet18", preset="released"), ["backbone resnet18", "basic blocks"]),
    (lambda: AHNet(backbone="resnet34", preset="released"), ["backbone resnet34"]),
    (lambda: AHNet(backbone="resnet18", preset="paper"),
     ["stem_pool_before_norm=False", "dense_layer='anisotropic'", "pyramid_padding=0", "head_kernel=(1, 1, 1)",
      "head_bias=True"]),
    (lambda: AHNet(backbone="resnet18", preset="released", dense_layer="isotropic"), ["dense_layer='isotropic'"]),
    (lambda: AHNet(backbone="resnet18", preset="released", growth_rate=16, layers_per_block=2),
     ["growth_rate=16", "layers_per_block=2"]),
    (lambda: AHNet(backbone="resnet18", preset="released", pyramid_pools=(64, 32)),
     ["pyramid_pools=(64, 32)", "8, 16, 32, 64"]),
    (lambda: MCGCN(backbone="resnet18"), ["only an AH-Net maps", "MCGCN"]),
])
def test_what_monai_cannot_express_is_a_config_error_naming_it(build, messages):
    with pytest.raises(ConfigError) as err:
        to_monai_ahnet(build(), allow_aligned_corners=True)
    for message in messages:
        assert message in str(err.value)


def test_sizes_where_monai_computes_ours():
    assert size_multiple(AHNet(backbone="resnet18", preset="released")) == (128, 128, 32)
    assert size_multiple(AHNet(backbone="resnet18", preset="released", pyramid_pools=(8,))) == (32, 32, 32)
    check_size((256, 128, 64), (128, 128, 32))
    with pytest.raises(ConfigError, match=r"window 192x192x64: .* multiples of 128x128x32 .* use e.g. 256x256x64"):
        check_size((192, 192, 64), (128, 128, 32))
